/**
 * The RMSNorm kernels (src/backend/kernels/rms_norm.ts: forward, input gradient with the per-row 1/rms,
 * weight gradient) on WebGPU against their CPU references through `Backend.run`, as fast-check properties
 * over odd row counts and widths (narrower and wider than a workgroup), random eps, f32 and f16; and their
 * checks' errors.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { cpuDevice, type Device, DTypeError, ShapeError } from "../../../mod.ts";
import { RMS_NORM, RMS_NORM_BACKWARD, RMS_NORM_WEIGHT_GRAD } from "../../../src/backend/kernels/rms_norm.ts";
import { assertClose, type FloatType, floatTypes, onBoth, seedArb, TOL, values } from "../webgpu/compare.ts";
import { gpuTest } from "../webgpu/gpu.ts";

const widthArb = fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: 700 }));
const epsArb = fc.oneof(fc.constant(1e-6), fc.double({ min: 1e-8, max: 1, noNaN: true }));

/**
 * The size of the two terms dx subtracts, per element: |g w| r + |x| · |Σ g w x| r³ / n. Where g w is
 * nearly parallel to x, or a row holds one value, dx is their small difference (for one value exactly
 * g w r · eps / (x² + eps)) and f32 rounding errors scale with the terms, not with dx.
 */
function termScale(x: Float32Array, w: Float32Array, g: Float32Array, rows: number, n: number, eps: number) {
  const out = new Float64Array(rows * n);
  for (let i = 0; i < rows; i++) {
    let ss = 0, sgx = 0;
    for (let j = 0; j < n; j++) {
      ss += x[i * n + j] ** 2;
      sgx += g[i * n + j] * w[j] * x[i * n + j];
    }
    const r = 1 / Math.sqrt(ss / n + eps);
    for (let j = 0; j < n; j++) {
      out[i * n + j] = Math.abs(g[i * n + j] * w[j]) * r + Math.abs(x[i * n + j] * sgx) * r ** 3 / n;
    }
  }
  return out;
}

const norm = (v: ArrayLike<number>) => Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));

async function rmsCase(dev: Device, dt: FloatType, rows: number, n: number, eps: number, seed: number) {
  const x = values(rows * n, seed, dt), w = values(n, seed + 1, dt), g = values(rows * n, seed + 2, dt);
  const args = { rows, n, eps };
  const what = `[${rows}, ${n}] eps ${eps}`;
  const { gpu, cpu } = await onBoth(dev, dt, (u) => {
    const [y] = u.be.run(RMS_NORM, [u.up(x), u.up(w)], args);
    const gs = u.up(g), xs = u.up(x);
    const [dx, r] = u.be.run(RMS_NORM_BACKWARD, [xs, u.up(w), gs], args);
    const [dw] = u.be.run(RMS_NORM_WEIGHT_GRAD, [xs, gs, r], args);
    return [y, dx, r, dw];
  });
  assertClose(`rmsNorm y ${what}`, gpu[0], cpu[0], dt);
  assertClose(`rmsNorm 1/rms ${what}`, gpu[2], cpu[2], "f32");
  assertClose(`rmsNorm dw ${what}`, gpu[3], cpu[3], dt);
  // dx: within the tolerance of the larger of its own size and its terms' size.
  const finite = cpu[1].every(Number.isFinite);
  if (!finite) {
    assert.deepEqual(
      gpu[1].map((v) => Number.isFinite(v) ? 0 : v),
      cpu[1].map((v) => Number.isFinite(v) ? 0 : v),
      `rmsNorm dx ${what} overflows`,
    );
  }
  const err = norm(gpu[1].map((v, i) => (Number.isFinite(cpu[1][i]) ? v - cpu[1][i] : 0)));
  const size = Math.max(
    norm(cpu[1].map((v) => Number.isFinite(v) ? v : 0)),
    norm(termScale(x, w, g, rows, n, eps)),
  );
  assert.ok(err <= TOL[dt] * size, `rmsNorm dx ${what} (${dt}): error ${err} against a size of ${size}`);
}

gpuTest("rmsNorm forward, input and weight gradients on WebGPU equal their CPU references", async (dev) => {
  await fc.assert(
    fc.asyncProperty(
      floatTypes(dev),
      fc.integer({ min: 1, max: 9 }),
      widthArb,
      epsArb,
      seedArb,
      (dt, r, n, e, s) => rmsCase(dev, dt, r, n, e, s),
    ),
    { numRuns: 25 },
  );
});

gpuTest(
  "rmsNorm kernels: one row of one value (fast-check's shrunk case: dx is a cancellation), many wide rows",
  async (dev) => {
    await rmsCase(dev, "f32", 1, 1, 1e-8, 0);
    await rmsCase(dev, "f32", 1, 1, 1e-5, 3);
    await rmsCase(dev, "f32", 67, 577, 1e-6, 4);
  },
);

Deno.test("rmsNorm kernels' checks: sizes and dtypes that do not fit are errors naming the kernel", () => {
  const be = cpuDevice().backend;
  const x = be.upload(new Float32Array(6), "f32"), w = be.upload(new Float32Array(3), "f32");
  const w64 = be.upload(new Float64Array(3), "f64");
  try {
    assert.throws(
      () => be.run(RMS_NORM, [x, w], { rows: 3, n: 3, eps: 0 }),
      (e) => e instanceof ShapeError && /rmsNorm: x \[3, 3\]/.test(e.message),
    );
    assert.throws(
      () => be.run(RMS_NORM, [x, w64], { rows: 2, n: 3, eps: 0 }),
      (e) => e instanceof DTypeError && /rmsNorm/.test(e.message),
    );
    assert.throws(
      () => be.run(RMS_NORM_BACKWARD, [x, w, w], { rows: 2, n: 3, eps: 0 }),
      (e) => e instanceof ShapeError && /gradient/.test(e.message),
    );
    assert.throws(
      () => be.run(RMS_NORM_WEIGHT_GRAD, [x, x, w64], { rows: 2, n: 3, eps: 0 }),
      (e) => e instanceof DTypeError && /1\/rms/.test(e.message),
    );
  } finally {
    for (const s of [x, w, w64]) be.free(s);
  }
});
