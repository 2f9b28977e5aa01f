/** Mixed precision on the CPU: f16 base + f32 adapters through the fused op, and f16 parameters under AdamW. */
import assert from "node:assert/strict";
import { cpuDevice } from "../../mod.ts";
import { MIXED_CASES, runF16AdamW, runMixedCase } from "./mixed_precision_cases.ts";

for (const c of MIXED_CASES) {
  Deno.test(`mixed precision (default f16 base + f32 adapters), fused = composed within 1e-2 (CPU): ${JSON.stringify(c)}`, async () => {
    const errs = await runMixedCase(cpuDevice(), c);
    for (const [k, e] of Object.entries(errs)) assert.ok(e <= 1e-2, `${k}: relative error ${e}`);
  });
}

Deno.test("f16 parameters under AdamW (eps 1e-8): f32 moments, update in f32 rounded once, no NaN (CPU)", () =>
  runF16AdamW(cpuDevice()));
