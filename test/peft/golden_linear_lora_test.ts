/** The three single-layer reference cases (float64 PyTorch, stored f32) through every LoRA path on the CPU. */
import assert from "node:assert/strict";
import { cpuDevice } from "../../mod.ts";
import { LINEAR_LORA_PATHS, linearLoraCases, runLinearLoraCase } from "../golden_linear_lora.ts";

Deno.test("golden linear_lora fixture holds the three cases", () => {
  assert.deepEqual(linearLoraCases, ["case0", "case1", "case2"]);
});

for (const c of linearLoraCases) {
  for (const path of LINEAR_LORA_PATHS) {
    Deno.test(`golden linear_lora ${c} via ${path} on the CPU: y, dx, dA, dB within 1e-5`, async () => {
      const errs = await runLinearLoraCase(c, path, cpuDevice());
      for (const [k, e] of Object.entries(errs)) {
        assert.ok(e <= 1e-5, `${c} ${path} ${k}: relative error ${e}`);
      }
    });
  }
}
