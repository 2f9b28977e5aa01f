/**
 * The multi-tensor AdamW and the fused clipGradNorm on WebGPU against the same optimizer on the CPU: many
 * parameters of odd shapes (rank 1, 2-D, 3-D), some without gradients, f32 and f16, several steps.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { AdamW, clipGradNorm, cpuDevice, type Device, type Tensor, tensor } from "../../mod.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";
import { assertClose, type FloatType, floatTypes, values } from "../backend/webgpu/compare.ts";

/** Parameters (and per step their gradients, null for a skipped one) on `device`. */
function makeParams(device: Device, dtype: FloatType, shapes: number[][], seed: number): Tensor[] {
  return shapes.map((s, i) =>
    tensor(values(s.reduce((a, b) => a * b, 1), seed + i, dtype), s, { device, dtype, requiresGrad: true })
  );
}

const shapeArb = fc.oneof(
  fc.tuple(fc.integer({ min: 1, max: 70 })),
  fc.tuple(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 1, max: 20 })),
  fc.tuple(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 7 }), fc.integer({ min: 1, max: 9 })),
).map((t) => [...t]);

/** Runs `steps` steps of clipping (when maxNorm) and AdamW on `device`; returns parameters and norms. */
async function train(
  device: Device,
  dtype: FloatType,
  shapes: number[][],
  skip: boolean[][],
  seed: number,
  maxNorm: number | null,
) {
  const params = makeParams(device, dtype, shapes, seed);
  const opt = new AdamW(params, { lr: 0.05, weightDecay: 0.1 });
  const norms: number[] = [];
  for (let t = 0; t < skip.length; t++) {
    params.forEach((p, i) => {
      p.grad = skip[t][i]
        ? null
        : tensor(values(p.size, seed * 7 + t * 101 + i, dtype), p.shape, { device, dtype });
    });
    if (maxNorm !== null) {
      const n = clipGradNorm(params, maxNorm);
      if (n !== null) norms.push(await n.item());
    }
    opt.step();
    opt.zeroGrad();
  }
  const out = [];
  for (const p of params) out.push(Float32Array.from(await p.data()));
  const moments = [];
  for (const s of opt.state) if (s !== null) moments.push(Float32Array.from(await s.expAvgSq.data()));
  return { out, moments, norms, steps: opt.state.map((s) => s?.step ?? 0) };
}

gpuTest("AdamW (+ clipGradNorm) over many tensors on WebGPU matches the CPU (f32, f16)", async (dev) => {
  await fc.assert(
    fc.asyncProperty(
      floatTypes(dev),
      fc.array(shapeArb, { minLength: 1, maxLength: 25 }),
      fc.integer({ min: 1, max: 3 }),
      fc.integer({ min: 0, max: 1000 }),
      fc.constantFrom(null, 0.5, 100),
      async (dtype, shapes, steps, seed, maxNorm) => {
        const skip = Array.from(
          { length: steps },
          (_, t) => shapes.map((_, i) => (i * 3 + t + seed) % 5 === 0),
        );
        const ours = await train(dev, dtype, shapes, skip, seed, maxNorm);
        const ref = await train(cpuDevice(), dtype, shapes, skip, seed, maxNorm);
        assert.deepEqual(ours.steps, ref.steps);
        ours.out.forEach((o, i) => assertClose(`adamw params ${i}`, o, ref.out[i], dtype));
        ours.moments.forEach((o, i) => assertClose(`adamw exp_avg_sq ${i}`, o, ref.moments[i], "f32"));
        assertClose("clipGradNorm norms", ours.norms, ref.norms, "f32");
      },
    ),
    { numRuns: 15 },
  );
});
