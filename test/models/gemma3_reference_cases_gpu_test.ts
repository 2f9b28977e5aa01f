/**
 * The Gemma 3 reference case (scripts/make_gemma3_cases.py) on WebGPU: fused and eager logits, LoRA
 * logits, loss, gradients, AdamW, greedy tokens with and without EOS, and merge within 1e-4 of
 * transformers + PEFT.
 */
import { GEMMA3_CASE, runGemma3Case } from "./gemma3_cases.ts";
import { gpu, gpuTest } from "../backend/webgpu/gpu.ts";
import { note, printWorst } from "../backend/webgpu/compare.ts";

gpuTest(`reference case ${GEMMA3_CASE} on WebGPU matches transformers + PEFT within 1e-4`, async (device) => {
  await runGemma3Case(device, 1e-4, note);
});

Deno.test({
  name: "gemma3 reference case errors summary",
  ignore: gpu === null,
  fn: () => printWorst("gemma3 case"),
});
