/**
 * The RoPE kernel (src/backend/kernels/rope.ts) on WebGPU against its CPU reference through
 * `Backend.run`: fast-check over batch, sequence, heads, even head widths, one table or one per batch
 * row, every input and output layout, forward and backward, f32 and f16. On the CPU in f64: the backward
 * is the transpose of the forward (⟨rope(x), g⟩ = ⟨x, ropeᵀ(g)⟩) for any cos and sin, and the forward
 * is a rotation of each pair (i, i + dim/2) when cos² + sin² = 1 (lengths kept).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { cpuDevice, type Device, ShapeError } from "../../../mod.ts";
import { ROPE, type RopeArgs } from "../../../src/backend/kernels/rope.ts";
import { assertClose, type FloatType, floatTypes, onBoth, seedArb, values } from "../webgpu/compare.ts";
import { gpuTest } from "../webgpu/gpu.ts";
import { Rng } from "../../../src/core/random.ts";

const argsArb: fc.Arbitrary<RopeArgs> = fc.record({
  batch: fc.integer({ min: 1, max: 3 }),
  seq: fc.integer({ min: 1, max: 9 }),
  heads: fc.integer({ min: 1, max: 5 }),
  dim: fc.oneof(fc.constantFrom(2, 6, 64, 128), fc.integer({ min: 1, max: 40 }).map((h) => 2 * h)),
  perBatch: fc.boolean(),
  inHeadsFirst: fc.boolean(),
  outHeadsFirst: fc.boolean(),
  backward: fc.boolean(),
});

const sizes = (a: RopeArgs) => ({
  x: a.batch * a.seq * a.heads * a.dim,
  tab: (a.perBatch ? a.batch : 1) * a.seq * a.dim,
});

async function ropeCase(dev: Device, dt: FloatType, a: RopeArgs, seed: number) {
  const { x: nx, tab } = sizes(a);
  const x = values(nx, seed, dt), cos = values(tab, seed + 1, dt), sin = values(tab, seed + 2, dt);
  const { gpu, cpu } = await onBoth(dev, dt, (u) => u.be.run(ROPE, [u.up(x), u.up(cos), u.up(sin)], a));
  assertClose(`rope ${JSON.stringify(a)}`, gpu[0], cpu[0], dt);
}

gpuTest("rope forward and backward, every layout, on WebGPU equal the CPU reference", async (dev) => {
  await fc.assert(
    fc.asyncProperty(floatTypes(dev), argsArb, seedArb, (dt, a, s) => ropeCase(dev, dt, a, s)),
    { numRuns: 30 },
  );
});

/** The reference on the CPU in f64. */
function cpuRope(a: RopeArgs, x: Float64Array, cos: Float64Array, sin: Float64Array): Float64Array {
  const be = cpuDevice().backend;
  const ins = [x, cos, sin].map((v) => be.upload(v, "f64"));
  const [y] = be.run(ROPE, ins, a);
  const out = Float64Array.from(be.readSync(y));
  for (const s of [...ins, y]) be.free(s);
  return out;
}

Deno.test("rope's backward is the transpose of its forward, and the forward keeps lengths on unit tables (CPU, f64)", () => {
  fc.assert(
    fc.property(argsArb, seedArb, (a, seed) => {
      const rng = new Rng(seed);
      const { x: nx, tab } = sizes(a);
      const rand = (n: number) => Float64Array.from({ length: n }, () => rng.normal());
      const x = rand(nx), g = rand(nx), cos = rand(tab), sin = rand(tab);
      const fwd = { ...a, backward: false };
      // The transpose maps the forward's output layout back to its input layout.
      const back = { ...a, inHeadsFirst: a.outHeadsFirst, outHeadsFirst: a.inHeadsFirst, backward: true };
      const y = cpuRope(fwd, x, cos, sin), xt = cpuRope(back, g, cos, sin);
      const dot = (p: Float64Array, q: Float64Array) => p.reduce((s, v, i) => s + v * q[i], 0);
      const lhs = dot(y, g), rhs = dot(x, xt);
      assert.ok(
        Math.abs(lhs - rhs) <= 1e-9 * (1 + Math.abs(lhs)),
        `<rope(x), g> ${lhs} vs <x, rope^T(g)> ${rhs}`,
      );
      // Unit tables as transformers builds them (one angle per pair): a rotation keeps each head's length.
      const angles = rand(tab);
      const c = angles.map((_, i) => Math.cos(angles[i - (i % a.dim) + (i % (a.dim / 2))]));
      const s = angles.map((_, i) => Math.sin(angles[i - (i % a.dim) + (i % (a.dim / 2))]));
      const r = cpuRope(fwd, x, c, s);
      assert.ok(Math.abs(dot(r, r) - dot(x, x)) <= 1e-9 * dot(x, x), "lengths kept");
    }),
    { numRuns: 60 },
  );
});

Deno.test("rope's check: an odd head width and tables of the wrong size are ShapeErrors naming the op", () => {
  const be = cpuDevice().backend;
  const x = be.upload(new Float32Array(12), "f32"), t = be.upload(new Float32Array(6), "f32");
  const a: RopeArgs = {
    batch: 1,
    seq: 2,
    heads: 2,
    dim: 3,
    perBatch: false,
    inHeadsFirst: false,
    outHeadsFirst: true,
    backward: false,
  };
  try {
    assert.throws(
      () => be.run(ROPE, [x, t, t], a),
      (e) => e instanceof ShapeError && /rope: head width 3/.test(e.message),
    );
    assert.throws(
      () => be.run(ROPE, [x, t, t], { ...a, heads: 3, dim: 2, backward: true }),
      (e) => e instanceof ShapeError && /rope backward: cos/.test(e.message),
    );
  } finally {
    be.free(x);
    be.free(t);
  }
});
