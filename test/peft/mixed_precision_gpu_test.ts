/**
 * Mixed precision on WebGPU: f16 base + f32 adapters through the fused kernels against the composed path,
 * and f16 parameters under AdamW. Needs `shader-f16`: an adapter without it is refused in CI on Deno's
 * WebGPU (gpu.ts), and on Dawn, which has none, the tests return at once (the CPU twins in
 * mixed_precision_test.ts run everywhere).
 */
import assert from "node:assert/strict";
import { gpu, gpuTest } from "../backend/webgpu/gpu.ts";
import { note, printWorst } from "../backend/webgpu/compare.ts";
import { MIXED_CASES, runF16AdamW, runMixedCase } from "./mixed_precision_cases.ts";

for (const c of MIXED_CASES) {
  gpuTest(
    `mixed precision (default f16 base + f32 adapters), fused = composed within 1e-2 (WebGPU): ${
      JSON.stringify(c)
    }`,
    async (dev) => {
      if (!dev.supportsDType("f16")) return;
      const errs = await runMixedCase(dev, c);
      for (const [k, e] of Object.entries(errs)) {
        note(`mixed precision ${k}`, e);
        assert.ok(e <= 1e-2, `${k}: relative error ${e}`);
      }
    },
  );
}

gpuTest(
  "f16 parameters under AdamW (eps 1e-8): f32 moments, update in f32 rounded once, no NaN (WebGPU)",
  (dev) => {
    if (!dev.supportsDType("f16")) return;
    return runF16AdamW(dev);
  },
);

Deno.test({
  name: "mixed precision errors summary",
  ignore: gpu === null,
  fn: () => printWorst("mixed precision"),
});
