/** A tensor on a WebGPU device prints shape, dtype, device and requiresGrad, but no values (reads are async). */
import assert from "node:assert/strict";
import { tensor } from "../../mod.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";

gpuTest("String(t) of a WebGPU tensor names its device and shows no values", async (device) => {
  const t = tensor([1, 2, 3, 4], [2, 2], { device, requiresGrad: true });
  assert.equal(String(t), `Tensor(shape=[2, 2], dtype=f32, device=${device}, requiresGrad=true)`);
  assert.deepEqual(Array.from(await t.data()), [1, 2, 3, 4]); // the print read nothing and changed nothing
  t.dispose();
});
