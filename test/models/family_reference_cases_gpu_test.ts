/**
 * The Qwen2 / Qwen3 reference cases (scripts/make_family_cases.py) on WebGPU: logits, loss, gradients,
 * AdamW, greedy tokens with and without EOS, and merge within 1e-4 of transformers + PEFT.
 */
import { FAMILY_CASES, runFamilyCase } from "./family_cases.ts";
import { gpu, gpuTest } from "../backend/webgpu/gpu.ts";
import { note, printWorst } from "../backend/webgpu/compare.ts";

for (const name of Object.keys(FAMILY_CASES)) {
  gpuTest(`reference case ${name} on WebGPU matches transformers + PEFT within 1e-4`, async (device) => {
    await runFamilyCase(name, device, 1e-4, note);
  });
}

Deno.test({
  name: "golden family cases errors summary",
  ignore: gpu === null,
  fn: () => printWorst("family cases"),
});
