/**
 * Backend.write (in-place host values into an existing storage, what hotswapAdapter uses) on the CPU
 * reference and on WebGPU: the same storage with the new values rounded to its dtype, nothing allocated,
 * work queued before the write still reading the old values, and a wrong length a ShapeError that writes
 * nothing.
 */
import assert from "node:assert/strict";
import { cpuDevice, type Device, ShapeError } from "../../../mod.ts";
import { AFFINE } from "../../../src/backend/kernels/affine.ts";
import { gpu, noGpu } from "./gpu.ts";

async function check(dev: Device): Promise<void> {
  const be = dev.backend;
  for (const dtype of ["f32", "f16"] as const) {
    if (!be.supportsDType(dtype)) continue;
    const s = be.upload([1, 2, 3], dtype);
    // queued before the write: must see 1, 2, 3
    const [before] = be.run(AFFINE, [s], { mul: 2, add: 0 });
    const mem = dev.memory();
    dev.resetPeakMemory();
    be.write(s, [0.1, -4, 1e5]);
    const now = dev.memory();
    assert.deepEqual([now.bytes, now.buffers, now.peakBytes], [mem.bytes, mem.buffers, mem.bytes]);
    const want = dtype === "f16" ? [0.0999755859375, -4, Infinity] : [Math.fround(0.1), -4, 1e5];
    assert.deepEqual([...(await be.read(s))], want);
    assert.deepEqual([...(await be.read(before))], [2, 4, 6]);
    assert.throws(
      () => be.write(s, [1, 2]),
      (e: unknown) => e instanceof ShapeError && /2 values .* 3 el/.test(String(e)),
    );
    assert.deepEqual([...(await be.read(s))], want);
    be.free(s);
    be.free(before);
  }
}

Deno.test("Backend.write on the CPU: in place, rounded, nothing allocated, wrong lengths refused", () =>
  check(cpuDevice()));

Deno.test({
  name: "Backend.write on WebGPU: in place, rounded, after the queued work that reads the old values",
  ignore: noGpu,
  fn: () => check(gpu!),
});
