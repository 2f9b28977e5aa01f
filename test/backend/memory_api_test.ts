/**
 * Device memory, limits and sync (src/backend/device.ts and both backends): `memory()` counts live
 * tensors' bytes with their peak and the WebGPU pool, `resetPeakMemory()` restarts the peak,
 * `setMemoryLimit()` refuses work that would pass the limit before anything is allocated or queued, the
 * CPU device's default limit is half the machine's memory, and `sync()` waits for queued work.
 *
 * Each WebGPU test opens its own device: counts are per device, so other tests cannot move them.
 */
import assert from "node:assert/strict";
import {
  ConfigError,
  cpuDevice,
  type Device,
  DeviceError,
  matmul,
  noGrad,
  tensor,
  webgpuDevice,
  zeros,
} from "../../mod.ts";
import { defaultCpuMemoryLimit } from "../../src/backend/cpu/cpu_backend.ts";
import { noGpu } from "./webgpu/gpu.ts";
import type { WebGpuBackend } from "../../src/backend/webgpu/backend.ts";

/** Runs `body` on a fresh WebGPU device (destroyed afterwards) and on the CPU device. */
function bothDevices(name: string, body: (device: Device) => Promise<void> | void): void {
  Deno.test(`${name} (cpu)`, () => body(cpuDevice()));
  Deno.test({
    name: `${name} (webgpu)`,
    ignore: noGpu,
    fn: async () => {
      const device = await webgpuDevice();
      try {
        await body(device);
      } finally {
        device.destroy();
      }
    },
  });
}

bothDevices(
  "memory(): bytes follow live tensors, peakBytes keeps the high-water mark until reset",
  async (device) => {
    const start = device.memory();
    device.resetPeakMemory();
    assert.equal(device.memory().peakBytes, start.bytes);
    const a = zeros([100], { device }); // 400 bytes
    const b = zeros([50], { device, dtype: "f32" }); // 200 bytes
    const mid = device.memory();
    assert.equal(mid.buffers - start.buffers, 2);
    assert.equal(mid.bytes - start.bytes, 600);
    assert.equal(mid.peakBytes, mid.bytes);
    a.dispose();
    const after = device.memory();
    assert.equal(after.bytes - start.bytes, 200);
    assert.equal(after.peakBytes, mid.bytes, "the peak stays after a free");
    device.resetPeakMemory();
    assert.equal(device.memory().peakBytes, after.bytes);
    b.dispose();
    await device.sync();
    assert.equal(device.memory().bytes, start.bytes);
  },
);

Deno.test({
  name: "memory(): pooledBytes holds freed WebGPU buffers, and a same-sized tensor reuses them",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      const a = zeros([1000], { device });
      assert.equal(device.memory().pooledBytes, 0);
      a.dispose();
      await device.sync();
      const pooled = device.memory().pooledBytes;
      assert.ok(pooled >= 4000, `pooled ${pooled}`);
      const b = zeros([1000], { device });
      assert.equal(device.memory().pooledBytes, 0, "the freed buffer was reused");
      b.dispose();
    } finally {
      device.destroy();
    }
  },
});

Deno.test("memory(): the CPU device pools nothing", () => {
  const t = zeros([10], { device: cpuDevice() });
  t.dispose();
  assert.equal(cpuDevice().memory().pooledBytes, 0);
});

bothDevices(
  "setMemoryLimit: work past the limit is a DeviceError naming the op and bytes; nothing is allocated",
  async (device) => {
    const old = device.memoryLimit;
    const a = tensor([1, 2, 3, 4, 5, 6], [2, 3], { device });
    const b = tensor([1, 2, 3, 4, 5, 6], [3, 2], { device });
    const before = device.memory();
    const pipelines = device.kind === "webgpu" ? (device.backend as WebGpuBackend).pipelineCount : 0;
    try {
      device.setMemoryLimit(before.bytes + 10); // room for 2 f32 values
      assert.equal(device.memoryLimit, before.bytes + 10);
      assert.throws(() => zeros([3], { device }), (e: unknown) => {
        assert.ok(e instanceof DeviceError, String(e));
        assert.match(e.message, /12 bytes/);
        assert.match(e.message, /memory limit/);
        return true;
      });
      assert.throws(() => noGrad(() => matmul(a, b)), (e: unknown) => {
        assert.ok(e instanceof DeviceError, String(e));
        assert.match(e.message, /matmul/);
        assert.match(e.message, /16 bytes/);
        return true;
      });
      assert.throws(() => noGrad(() => a.add(a)), (e: unknown) => {
        assert.ok(e instanceof DeviceError, String(e));
        assert.match(e.message, /binary|add/);
        assert.match(e.message, /24 bytes/);
        return true;
      });
      assert.deepEqual(device.backend.memory(), { buffers: before.buffers, bytes: before.bytes });
      if (device.kind === "webgpu") {
        assert.equal(
          (device.backend as WebGpuBackend).pipelineCount,
          pipelines,
          "nothing was compiled or queued",
        );
      }
      // Within the limit, work goes on.
      const small = zeros([2], { device });
      small.dispose();
      device.setMemoryLimit(null);
      assert.equal(device.memoryLimit, null);
      const c = noGrad(() => matmul(a, b));
      assert.deepEqual(Array.from(await c.data()), [22, 28, 49, 64]);
      c.dispose();
    } finally {
      device.setMemoryLimit(old);
      a.dispose();
      b.dispose();
    }
  },
);

Deno.test({
  name: "setMemoryLimit on WebGPU gives pooled buffers back first",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      zeros([10000], { device }).dispose();
      await device.sync();
      assert.ok(device.memory().pooledBytes >= 40000);
      device.setMemoryLimit(1000);
      assert.equal(device.memory().pooledBytes, 0);
      const t = zeros([100], { device });
      assert.equal(device.memory().bytes, 400);
      t.dispose();
    } finally {
      device.destroy();
    }
  },
});

Deno.test("setMemoryLimit refuses anything but a whole number of bytes or null (ConfigError)", () => {
  for (const bad of [-1, 1.5, NaN, Infinity, "10", undefined]) {
    assert.throws(() => cpuDevice().setMemoryLimit(bad as number), ConfigError, String(bad));
  }
});

Deno.test("the CPU device's default memory limit is half the machine's memory", () => {
  const total = Deno.systemMemoryInfo().total;
  assert.equal(defaultCpuMemoryLimit(), Math.floor(total / 2));
  const limit = cpuDevice().memoryLimit;
  assert.ok(limit !== null && limit > 0 && limit <= total / 2, `limit ${limit} of ${total}`);
});

Deno.test({
  name: "sync() waits for queued WebGPU work; on a destroyed device it is a DeviceError",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    const a = tensor([1, 2, 3], [3], { device });
    const b = noGrad(() => a.mul(a).add(a));
    await device.sync();
    assert.deepEqual(Array.from(await b.data()), [2, 6, 12]);
    device.destroy();
    await assert.rejects(() => device.sync(), DeviceError);
  },
});

Deno.test("sync() on the CPU resolves at once", async () => {
  await cpuDevice().sync();
});
