/**
 * `causalAttention` on the CPU against attention composed from the eager ops (q kᵀ · scale plus an
 * additive mask holding f32's most negative value, softmax, · v, as transformers' eager path), forward and
 * the gradients of q, k and v, over random sizes, grouped-query ratios, padding masks, windows and caches.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  add,
  causalAttention,
  cpuDevice,
  matmul,
  mul,
  reshape,
  softmax,
  sum,
  type Tensor,
  tensor,
  transpose,
} from "../../mod.ts";
import { ShapeError } from "../../src/core/errors.ts";
import { Rng } from "../../src/core/random.ts";

/** One attention problem: sizes, options and the seed of its values. */
interface Case {
  batch: number;
  kvHeads: number;
  group: number;
  seq: number;
  past: number;
  dim: number;
  window: number;
  keyMask: Int32Array | null;
  seed: number;
}

/** The eager composition: what the models did before the fused op. */
export function eagerAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  keyMask: Int32Array | null,
  window: number,
): Tensor {
  const [batch, heads, seq, dim] = q.shape;
  const [, kvHeads, keys] = k.shape;
  const group = heads / kvHeads;
  const m = new Float64Array(batch * seq * keys);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < seq; i++) {
      const qa = keys - seq + i;
      for (let j = 0; j < keys; j++) {
        const visible = j <= qa && (window === 0 || qa - j < window) &&
          (keyMask === null || keyMask[b * keys + j] === 1);
        if (!visible) m[(b * seq + i) * keys + j] = -3.4028234663852886e38;
      }
    }
  }
  const mask = tensor(m, [batch, 1, 1, seq, keys], { device: q.device, dtype: q.dtype });
  const scores = mul(matmul(reshape(q, [batch, kvHeads, group * seq, dim]), transpose(k, 2, 3)), dim ** -0.5);
  const masked = reshape(add(reshape(scores, [batch, kvHeads, group, seq, keys]), mask), [
    batch,
    kvHeads,
    group * seq,
    keys,
  ]);
  return reshape(matmul(softmax(masked, -1), v), [batch, heads, seq, dim]);
}

/** Output and gradients of q, k, v for a weighted sum of the output. */
function outputs(c: Case, dtype: "f32" | "f64", fused: boolean): Float64Array[] {
  const rng = new Rng(c.seed);
  const heads = c.kvHeads * c.group, keys = c.past + c.seq;
  const make = (shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    return tensor(Array.from({ length: n }, () => rng.normal()), shape, {
      device: cpuDevice(),
      dtype,
      requiresGrad: true,
    });
  };
  const q = make([c.batch, heads, c.seq, c.dim]);
  const k = make([c.batch, c.kvHeads, keys, c.dim]);
  const v = make([c.batch, c.kvHeads, keys, c.dim]);
  const y = fused
    ? causalAttention(q, k, v, { keyMask: c.keyMask, window: c.window })
    : eagerAttention(q, k, v, c.keyMask, c.window);
  const w = tensor(Array.from({ length: y.size }, () => rng.normal()), y.shape, { dtype });
  sum(mul(y, w)).backward();
  return [y, q.grad!, k.grad!, v.grad!].map((t) => Float64Array.from(t.dataSync()));
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  batch: fc.integer({ min: 1, max: 3 }),
  kvHeads: fc.integer({ min: 1, max: 3 }),
  group: fc.constantFrom(1, 2, 3, 4),
  seq: fc.integer({ min: 1, max: 13 }),
  past: fc.constantFrom(0, 0, 1, 4),
  dim: fc.constantFrom(1, 2, 3, 5, 8, 16),
  window: fc.constantFrom(0, 0, 1, 2, 5),
  masked: fc.boolean(),
  seed: fc.integer({ min: 0, max: 1e9 }),
}).map(({ masked, ...c }) => {
  const keys = c.past + c.seq;
  // Left padding of random length per row, sometimes a whole row: rows that see no key must work too.
  const rng = new Rng(c.seed + 1);
  const keyMask = masked
    ? Int32Array.from(
      { length: c.batch * keys },
      (_, i) => (i % keys) >= Math.floor(rng.uniform() * 3) ? 1 : 0,
    )
    : null;
  return { ...c, keyMask };
});

function assertNear(name: string, ours: Float64Array, ref: Float64Array, tol: number) {
  let worst = 0, scale = 0;
  for (let i = 0; i < ref.length; i++) {
    worst = Math.max(worst, Math.abs(ours[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  assert.ok(worst <= tol * Math.max(1, scale), `${name}: max error ${worst} (values up to ${scale})`);
}

function checkCase(c: Case, dtype: "f32" | "f64", tol: number) {
  const ours = outputs(c, dtype, true), ref = outputs(c, dtype, false);
  ["output", "dq", "dk", "dv"].forEach((n, i) => assertNear(`${n} (${dtype})`, ours[i], ref[i], tol));
}

Deno.test("causalAttention equals the eager composition on the CPU: f64 to 1e-12, f32 to 1e-5", () => {
  fc.assert(
    fc.property(caseArb, (c) => {
      checkCase(c, "f64", 1e-12);
      checkCase(c, "f32", 1e-5);
    }),
    { numRuns: 60 },
  );
});

Deno.test("causalAttention: a row with only padding keys has uniform weights over all keys, as eager", () => {
  const keyMask = Int32Array.from([0, 0, 1, 1, 1]);
  checkCase(
    { batch: 1, kvHeads: 1, group: 2, seq: 5, past: 0, dim: 3, window: 0, keyMask, seed: 7 },
    "f64",
    1e-12,
  );
});

Deno.test("causalAttention: a window of 1 sees only the query's own key (output = v at its position)", () => {
  const v = tensor([1, 2, 3, 4, 5, 6], [1, 1, 3, 2]);
  const q = tensor([9, 9, -9, 9, 0, 1], [1, 1, 3, 2]);
  const y = causalAttention(q, v, v, { window: 1 });
  assert.deepEqual(Array.from(y.dataSync()), [1, 2, 3, 4, 5, 6]);
});

Deno.test("causalAttention: mismatched shapes, head ratios and masks are ShapeErrors naming the op", () => {
  const t = (shape: number[]) => tensor(new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);
  assert.throws(
    () => causalAttention(t([1, 3, 2, 4]), t([1, 2, 2, 4]), t([1, 2, 2, 4])),
    (e) => e instanceof ShapeError && /causalAttention: q has 3 heads, not a multiple/.test(e.message),
  );
  assert.throws(
    () => causalAttention(t([1, 2, 3, 4]), t([1, 1, 2, 4]), t([1, 1, 2, 4])),
    (e) => e instanceof ShapeError && /2 keys for 3 queries/.test(e.message),
  );
  assert.throws(
    () => causalAttention(t([1, 2, 2, 4]), t([1, 1, 2, 5]), t([1, 1, 2, 5])),
    (e) => e instanceof ShapeError && /does not fit/.test(e.message),
  );
  assert.throws(
    () => causalAttention(t([1, 2, 2, 4]), t([1, 1, 2, 4]), t([1, 1, 2, 4]), { keyMask: new Int32Array(3) }),
    (e) =>
      e instanceof ShapeError &&
      /keyMask must be an Int32Array of \[batch, keys\] = \[1, 2\]/.test(e.message),
  );
  assert.throws(() => causalAttention(t([2, 2, 4]), t([1, 1, 2, 4]), t([1, 1, 2, 4])), /q must be 4-d/);
});
