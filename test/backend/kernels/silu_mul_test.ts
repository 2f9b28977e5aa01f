/**
 * The SiLU × up kernels (src/backend/kernels/silu_mul.ts) on WebGPU against their CPU references through
 * `Backend.run`, as a fast-check property over odd sizes, f32 and f16, with gates large enough that the
 * sigmoid saturates; and their checks' errors.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { cpuDevice, type Device, DTypeError, ShapeError } from "../../../mod.ts";
import { SILU_MUL, SILU_MUL_BACKWARD } from "../../../src/backend/kernels/silu_mul.ts";
import { assertClose, type FloatType, floatTypes, onBoth, seedArb, values } from "../webgpu/compare.ts";
import { gpuTest } from "../webgpu/gpu.ts";

async function siluCase(dev: Device, dt: FloatType, n: number, spread: number, seed: number) {
  const gate = values(n, seed, dt, { lo: -spread, hi: spread }), up = values(n, seed + 1, dt);
  const g = values(n, seed + 2, dt);
  const { gpu, cpu } = await onBoth(dev, dt, (u) => {
    const [y] = u.be.run(SILU_MUL, [u.up(gate), u.up(up)], { n });
    const [dg, du] = u.be.run(SILU_MUL_BACKWARD, [u.up(gate), u.up(up), u.up(g)], { n });
    return [y, dg, du];
  });
  ["y", "dgate", "dup"].forEach((name, i) => assertClose(`siluMul ${name} [${n}]`, gpu[i], cpu[i], dt));
}

gpuTest("siluMul forward and backward on WebGPU equal their CPU references", async (dev) => {
  await fc.assert(
    fc.asyncProperty(
      floatTypes(dev),
      fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: 5000 })),
      fc.constantFrom(1, 4, 30),
      seedArb,
      (dt, n, spread, s) => siluCase(dev, dt, n, spread, s),
    ),
    { numRuns: 25 },
  );
});

gpuTest("siluMul kernels: one element, and a size that is not a multiple of the workgroup", async (dev) => {
  await siluCase(dev, "f32", 1, 4, 1);
  await siluCase(dev, "f32", 257, 30, 2);
});

Deno.test("siluMul kernels' checks: sizes and dtypes that do not fit are errors naming the kernel", () => {
  const be = cpuDevice().backend;
  const a = be.upload(new Float32Array(4), "f32"), b = be.upload(new Float64Array(4), "f64");
  try {
    assert.throws(
      () => be.run(SILU_MUL, [a, b], { n: 4 }),
      (e) => e instanceof DTypeError && /siluMul/.test(e.message),
    );
    assert.throws(
      () => be.run(SILU_MUL_BACKWARD, [a, a, a], { n: 5 }),
      (e) => e instanceof ShapeError && /siluMul backward/.test(e.message),
    );
  } finally {
    be.free(a);
    be.free(b);
  }
});
