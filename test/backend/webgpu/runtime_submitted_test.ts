/**
 * GpuRuntime.submitted (src/backend/webgpu/runtime.ts): the promise of the work recorded so far, taken
 * while more work is recorded after it. The work before and after computes what it would with plain
 * sync(), the promise settles before the later work is waited for, and a destroyed device rejects it
 * with a DeviceError naming the call.
 */
import assert from "node:assert/strict";
import { DeviceError, noGrad, tensor, webgpuDevice } from "../../../mod.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import { noGpu } from "./gpu.ts";

Deno.test({
  name: "submitted(): work recorded before and after the promise computes as with sync()",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      const rt = (device.backend as WebGpuBackend).rt;
      const a = tensor([1, 2, 3, 4, 5], [5], { device });
      const first = noGrad(() => a.mul(a));
      const done = rt.submitted();
      // Recorded while the first batch may still run: it must not be lost or reordered before it.
      const second = noGrad(() => first.add(a));
      await done;
      assert.deepEqual(Array.from(await second.data()), [2, 6, 12, 20, 30]);
      assert.deepEqual(Array.from(await first.data()), [1, 4, 9, 16, 25]);
      // Many batches in flight, each promise awaited one behind, as the bench's pipelined timing does.
      let acc = noGrad(() => a.scale(0));
      let behind: Promise<void> | null = null;
      for (let i = 0; i < 6; i++) {
        const next = noGrad(() => acc.add(a));
        acc.dispose();
        acc = next;
        const p = rt.submitted();
        if (behind !== null) await behind;
        behind = p;
      }
      await behind;
      assert.deepEqual(Array.from(await acc.data()), [6, 12, 18, 24, 30]);
    } finally {
      device.destroy();
    }
  },
});

Deno.test({
  name: "submitted(): on a destroyed device rejects with a DeviceError naming the call",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    const rt = (device.backend as WebGpuBackend).rt;
    device.destroy();
    await assert.rejects(
      () => rt.submitted(),
      (e) => e instanceof DeviceError && /submitted/.test(e.message),
    );
  },
});
