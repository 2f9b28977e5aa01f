/** The single-layer PyTorch reference cases on WebGPU, through every LoRA path, at relative error ≤ 1e-4. */
import assert from "node:assert/strict";
import { LINEAR_LORA_PATHS, linearLoraCases, runLinearLoraCase } from "../golden_linear_lora.ts";
import { gpu, gpuTest } from "../backend/webgpu/gpu.ts";
import { note, printWorst } from "../backend/webgpu/compare.ts";

for (const c of linearLoraCases) {
  for (const path of LINEAR_LORA_PATHS) {
    gpuTest(`golden linear_lora ${c} via ${path} on WebGPU: y, dx, dA, dB within 1e-4`, async (device) => {
      const errs = await runLinearLoraCase(c, path, device);
      for (const [k, e] of Object.entries(errs)) {
        note(`golden linear_lora ${k}`, e);
        assert.ok(e <= 1e-4, `${c} ${path} ${k}: relative error ${e}`);
      }
    });
  }
}

Deno.test({
  name: "golden linear_lora errors summary",
  ignore: gpu === null,
  fn: () => printWorst("golden linear_lora"),
});
