/**
 * The WebGPU runtime's host-side caches (src/backend/webgpu/runtime.ts, pipelines.ts): a repeated op on
 * pooled buffers makes no new bind groups, a freed buffer comes back from the pool as the same buffer,
 * the pipeline lookup returns the compiled kernel of each specialisation (and a new one only for a new
 * specialisation), cached bind groups still compute the right values after the pool was trimmed, the pool
 * hands out the lowest free id whatever the order of frees, and buffers freed inside an open batch are
 * reused by later kernels of that batch but never overwritten by an upload before the batch ran.
 */
import assert from "node:assert/strict";
import { noGrad, tensor, webgpuDevice } from "../../../mod.ts";
import type { GpuStorage, WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import { PipelineCache } from "../../../src/backend/webgpu/pipelines.ts";
import { UNARY } from "../../../src/backend/kernels/unary.ts";
import { noGpu } from "./gpu.ts";

Deno.test({
  name: "a repeated op on pooled buffers reuses its bind group and its output buffer",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      const be = device.backend as WebGpuBackend;
      const a = tensor([1, 2, 3, 4], [4], { device });
      const b = tensor([10, 20, 30, 40], [4], { device });
      const once = async () => {
        const c = noGrad(() => a.add(b));
        const v = Array.from(await c.data());
        c.dispose();
        await device.sync(); // the freed output is back in the pool
        return v;
      };
      assert.deepEqual(await once(), [11, 22, 33, 44]);
      const groups = be.rt.bindGroupCount;
      for (let i = 0; i < 5; i++) assert.deepEqual(await once(), [11, 22, 33, 44]);
      assert.equal(be.rt.bindGroupCount, groups, "no new bind groups for the same buffers");
      // A different operand order is a different binding: one new bind group.
      const d = noGrad(() => b.add(a));
      assert.deepEqual(Array.from(await d.data()), [11, 22, 33, 44]);
      assert.ok(be.rt.bindGroupCount > groups);
      d.dispose();
      // Trimming the pool destroys buffers, so cached bind groups are dropped; results stay right.
      be.rt.trimPool(0);
      assert.equal(be.rt.bindGroupCount, 0);
      assert.deepEqual(await once(), [11, 22, 33, 44]);
      a.dispose();
      b.dispose();
    } finally {
      device.destroy();
    }
  },
});

Deno.test({
  name: "the pool hands a freed buffer back for the same size class",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      const rt = (device.backend as WebGpuBackend).rt;
      const x = rt.alloc(4000, "test: x");
      rt.release(x);
      const y = rt.alloc(3900, "test: y"); // same size class (4096)
      assert.equal(y, x);
      assert.equal(y.capacity, rt.capacityFor(4000));
      const z = rt.alloc(9000, "test: z");
      assert.notEqual(z.id, x.id);
      assert.equal(rt.inUseBytes, y.capacity + z.capacity);
      rt.release(y);
      rt.release(z);
      assert.equal(rt.inUseBytes, 0);
      assert.equal(rt.pooledBytes, y.capacity + z.capacity);
    } finally {
      device.destroy();
    }
  },
});

Deno.test({
  name: "the pipeline lookup finds each specialisation's kernel without re-keying it",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      const gpu = (device.backend as WebGpuBackend).gpuDevice;
      const cache = new PipelineCache(gpu, (m) => {
        throw new Error(m);
      });
      const k1 = cache.get(UNARY, { WG: 64, T: "f32", OP: "exp" });
      assert.equal(cache.get(UNARY, { WG: 64, T: "f32", OP: "exp" }), k1);
      const k2 = cache.get(UNARY, { WG: 64, T: "f32", OP: "neg" });
      assert.notEqual(k2, k1);
      assert.equal(cache.size, 2);
      assert.deepEqual(cache.keys(), [
        `unary|${JSON.stringify({ WG: 64, T: "f32", OP: "exp" })}`,
        `unary|${JSON.stringify({ WG: 64, T: "f32", OP: "neg" })}`,
      ]);
    } finally {
      device.destroy();
    }
  },
});

Deno.test({
  name: "the pool hands out the lowest free id, whatever order buffers were freed in",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      const rt = (device.backend as WebGpuBackend).rt;
      const bufs = [0, 1, 2, 3].map((i) => rt.alloc(1024, `test: ${i}`));
      for (const i of [2, 0, 3, 1]) rt.release(bufs[i]);
      const again = [0, 1, 2, 3].map((i) => rt.alloc(1024, `test: again ${i}`));
      assert.deepEqual(again.map((b) => b.id), bufs.map((b) => b.id));
      for (const b of again) rt.release(b);
    } finally {
      device.destroy();
    }
  },
});

Deno.test({
  name:
    "inside one batch: a freed buffer feeds a later kernel's output, and an upload never overwrites it early",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      const be = device.backend as WebGpuBackend;
      const n = 64;
      const x = be.upload(Float32Array.from({ length: n }, (_, i) => i), "f32");
      // y = 2x + 1 reads x; x is freed while that dispatch is still unsubmitted.
      const y = be.affine(x, 2, 1);
      const xId = (x as GpuStorage).buf!.id;
      be.free(x);
      // An upload must not take x's buffer: writeBuffer would run before the open batch's affine.
      const w = be.upload(Float32Array.from({ length: n }, () => -7), "f32");
      assert.notEqual((w as GpuStorage).buf!.id, xId);
      // A kernel output may take it at once: it runs after the affine that read x.
      const z = be.affine(y, 1, 0.5);
      assert.equal((z as GpuStorage).buf!.id, xId);
      const [yv, zv, wv] = [await be.read(y), await be.read(z), await be.read(w)];
      for (let i = 0; i < n; i++) {
        assert.equal(yv[i], 2 * i + 1);
        assert.equal(zv[i], 2 * i + 1.5);
        assert.equal(wv[i], -7);
      }
      for (const s of [y, z, w]) be.free(s);
    } finally {
      device.destroy();
    }
  },
});
