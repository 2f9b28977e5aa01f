/**
 * Qwen2 and Qwen3 against transformers 5.17 + PEFT 0.21 on the CPU reference, within 1e-5 (cases made by
 * scripts/make_family_cases.py; see test/models/family_cases.ts for what each checks).
 */
import { cpuDevice } from "../../mod.ts";
import { FAMILY_CASES, runFamilyCase } from "./family_cases.ts";

for (const name of Object.keys(FAMILY_CASES)) {
  Deno.test(
    `reference case ${name}: logits, loss, gradients, AdamW, greedy tokens with EOS and merge match transformers + PEFT`,
    () => runFamilyCase(name, cpuDevice(), 1e-5),
  );
}
