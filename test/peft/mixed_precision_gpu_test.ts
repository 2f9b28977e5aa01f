/**
 * Mixed precision on WebGPU: f16 base + f32 adapters through the fused kernels against the composed path,
 * and f16 parameters under AdamW. Needs `shader-f16`: on an adapter without it the f16 tests fail with
 * that reason rather than pass silently (the CPU twins in mixed_precision_test.ts run everywhere).
 */
import assert from "node:assert/strict";
import type { Device } from "../../mod.ts";
import { gpu, gpuTest } from "../backend/webgpu/gpu.ts";
import { note, printWorst } from "../backend/webgpu/compare.ts";
import { MIXED_CASES, runF16AdamW, runMixedCase } from "./mixed_precision_cases.ts";

function needF16(device: Device): void {
  if (!device.supportsDType("f16")) {
    throw new Error(
      `${device} lacks shader-f16, so f16 bases cannot run on it; the CPU twin covers the arithmetic`,
    );
  }
}

for (const c of MIXED_CASES) {
  gpuTest(
    `mixed precision (default f16 base + f32 adapters), fused = composed within 1e-2 (WebGPU): ${
      JSON.stringify(c)
    }`,
    async (dev) => {
      needF16(dev);
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
    needF16(dev);
    return runF16AdamW(dev);
  },
);

Deno.test({
  name: "mixed precision errors summary",
  ignore: gpu === null,
  fn: () => printWorst("mixed precision"),
});
