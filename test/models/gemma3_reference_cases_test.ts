/**
 * Gemma 3 against transformers 5.17 + PEFT 0.21 on the CPU reference, within 1e-5 (the case made by
 * scripts/make_gemma3_cases.py; see test/models/gemma3_cases.ts for what it checks).
 */
import { cpuDevice } from "../../mod.ts";
import { GEMMA3_CASE, runGemma3Case } from "./gemma3_cases.ts";

Deno.test(
  `reference case ${GEMMA3_CASE}: fused and eager logits, LoRA logits, loss, gradients, AdamW, greedy tokens with EOS and merge match transformers + PEFT`,
  () => runGemma3Case(cpuDevice(), 1e-5),
);
