/**
 * Forward values of the functional ops against naive index-by-index references written here, in f64
 * over random shapes (the gradient tests check backward against these forwards; this file checks the
 * forwards themselves).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  add,
  broadcastTo,
  concat,
  ConfigError,
  cpuDevice,
  crossEntropy,
  div,
  dropout,
  embedding,
  exp,
  linear,
  log,
  logSoftmax,
  matmul,
  maximum,
  mean,
  mul,
  permute,
  relu,
  reshape,
  rmsNorm,
  rsqrt,
  ShapeError,
  sigmoid,
  silu,
  slice,
  softmax,
  sqrt,
  sub,
  sum,
  type Tensor,
  tensor,
  transpose,
} from "../../mod.ts";
import { dropoutMask } from "../../src/tensor/mod.ts";
import { dropoutKeepScale } from "../../src/core/random.ts";
import { Rng } from "../../src/core/random.ts";
import { relErr } from "../helpers.ts";

const F64 = { device: cpuDevice(), dtype: "f64" as const };
const RUNS = 40;
const size = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);
const dimArb = fc.integer({ min: 1, max: 4 });
const shapeArb = (minRank: number, maxRank: number) =>
  fc.array(dimArb, { minLength: minRank, maxLength: maxRank });
const seedArb = fc.integer({ min: 0, max: 2 ** 31 - 1 });

/** A reference array: values plus shape, indexed by multi-indices. */
class Ref {
  constructor(readonly values: Float64Array, readonly shape: number[]) {}

  static random(shape: number[], seed: number): Ref {
    const rng = new Rng(seed);
    return new Ref(Float64Array.from({ length: size(shape) }, () => rng.normal()), shape);
  }

  /** Random multiples of 1/64: their sums and products are exact in f64 in any order. */
  static dyadic(shape: number[], seed: number): Ref {
    return new Ref(Ref.random(shape, seed).values.map((v) => Math.round(v * 64) / 64 + 0), shape);
  }

  static build(shape: number[], f: (idx: number[]) => number): Ref {
    const out = new Float64Array(size(shape));
    forEachIndex(shape, (idx, i) => (out[i] = f(idx)));
    return new Ref(out, shape);
  }

  at(idx: readonly number[]): number {
    let off = 0;
    for (let d = 0; d < this.shape.length; d++) off = off * this.shape[d] + idx[d];
    return this.values[off];
  }

  /** Value at `idx` of the output shape, reading this array broadcast (right-aligned) to it. */
  atBroadcast(idx: readonly number[]): number {
    const lead = idx.length - this.shape.length;
    return this.at(this.shape.map((d, i) => (d === 1 ? 0 : idx[lead + i])));
  }

  tensor(): Tensor {
    return tensor(this.values, this.shape, F64);
  }
}

/** Calls f with every multi-index of `shape` in row-major order and its flat position. */
function forEachIndex(shape: readonly number[], f: (idx: number[], flat: number) => void): void {
  const n = size(shape);
  const idx = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < n; i++) {
    f([...idx], i);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

/** Asserts a tensor's shape and values equal a reference (relative error `tol`; 0 means exact). */
function assertMatches(t: Tensor, ref: Ref, tol = 0): void {
  assert.deepEqual([...t.shape], ref.shape);
  const got = t.dataSync();
  if (tol === 0) assert.deepEqual([...got], [...ref.values]);
  else {
    const e = relErr(got, ref.values);
    assert.ok(e <= tol, `relative error ${e}`);
  }
}

function broadcastSource(out: number[]): fc.Arbitrary<number[]> {
  return fc.tuple(
    fc.integer({ min: 0, max: out.length }),
    fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
  )
    .map(([cut, ones]) => out.slice(cut).map((d, i) => (ones[i] ? 1 : d)));
}
/** Two shapes that broadcast together, with their broadcast shape (computed independently). */
const broadcastPairArb = shapeArb(0, 4).chain((out) => fc.tuple(broadcastSource(out), broadcastSource(out)))
  .map((
    [a, b],
  ) => {
    const rank = Math.max(a.length, b.length);
    const pad = (s: number[]) => [...new Array(rank - s.length).fill(1), ...s];
    const out = pad(a).map((d, i) => Math.max(d, pad(b)[i]));
    return [out, a, b] as const;
  });

// ---------------------------------------------------------------------------------------------------
// Element-wise

const binaryRefs = [
  ["add", add, (a: number, b: number) => a + b],
  ["sub", sub, (a: number, b: number) => a - b],
  ["mul", mul, (a: number, b: number) => a * b],
  ["div", div, (a: number, b: number) => a / b],
  ["maximum", maximum, (a: number, b: number) => Math.max(a, b)],
] as const;

for (const [name, op, f] of binaryRefs) {
  Deno.test(`${name} broadcasts like NumPy`, () => {
    fc.assert(
      fc.property(broadcastPairArb, seedArb, ([out, sa, sb], seed) => {
        const a = Ref.random(sa, seed), b = Ref.random(sb, seed + 1);
        const expected = Ref.build(out, (idx) => f(a.atBroadcast(idx), b.atBroadcast(idx)));
        assertMatches(op(a.tensor(), b.tensor()), expected);
        // A number on either side acts as a 0-d tensor.
        assertMatches(op(a.tensor(), 0.75), Ref.build(sa, (idx) => f(a.at(idx), 0.75)));
        assertMatches(op(-1.25, b.tensor()), Ref.build(sb, (idx) => f(-1.25, b.at(idx))));
      }),
      { numRuns: RUNS },
    );
  });
}

Deno.test("unary ops agree with independent formulations", () => {
  const cases: [string, (t: Tensor) => Tensor, (x: number) => number, (x: number) => number][] = [
    ["exp", exp, Math.exp, (x) => x],
    ["log", log, Math.log, Math.abs],
    ["sqrt", sqrt, Math.sqrt, Math.abs],
    ["rsqrt", rsqrt, (x) => Math.sqrt(1 / x), Math.abs],
    ["sigmoid", sigmoid, (x) => Math.exp(x) / (Math.exp(x) + 1), (x) => x],
    ["silu", silu, (x) => (x * Math.exp(x)) / (Math.exp(x) + 1), (x) => x],
    ["relu", relu, (x) => Math.max(x, 0), (x) => x],
  ];
  fc.assert(
    fc.property(shapeArb(0, 3), seedArb, (shape, seed) => {
      const x = Ref.random(shape, seed);
      for (const [name, op, f, domain] of cases) {
        const input = new Ref(x.values.map(domain), shape);
        const got = op(input.tensor()).dataSync();
        const want = input.values.map(f);
        assert.ok(relErr(got, want) < 1e-14, name);
      }
    }),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------------------------------------------------
// Reductions and shapes

Deno.test("sum and mean over any dims, keepDim or not, equal naive loops", () => {
  const arb = shapeArb(0, 4).chain((shape) =>
    fc.tuple(fc.constant(shape), fc.subarray([...shape.keys()]), fc.boolean())
  );
  fc.assert(
    fc.property(arb, seedArb, ([shape, dims, keepDim], seed) => {
      const x = Ref.dyadic(shape, seed); // exact sums: compared bit for bit
      const reduce = dims.length === 0 ? [...shape.keys()] : dims; // no dims given: every dim
      const kept = shape.map((d, i) => (reduce.includes(i) ? 1 : d));
      const totals = Ref.build(kept, () => 0);
      forEachIndex(shape, (idx) => {
        const k = idx.map((v, i) => (reduce.includes(i) ? 0 : v));
        let off = 0;
        for (let d = 0; d < kept.length; d++) off = off * kept[d] + k[d];
        totals.values[off] += x.at(idx);
      });
      const outShape = keepDim ? kept : shape.filter((_, i) => !reduce.includes(i));
      const n = reduce.reduce((p, d) => p * shape[d], 1);
      const arg = dims.length === 0 ? undefined : dims;
      assertMatches(sum(x.tensor(), arg, keepDim), new Ref(totals.values, outShape));
      assertMatches(
        mean(x.tensor(), arg, keepDim),
        new Ref(totals.values.map((v) => v / n), outShape),
        1e-15,
      );
    }),
    { numRuns: RUNS },
  );
});

Deno.test("broadcastTo repeats values along broadcast axes", () => {
  fc.assert(
    fc.property(shapeArb(0, 4).chain((out) => fc.tuple(fc.constant(out), broadcastSource(out))), seedArb, (
      [out, src],
      seed,
    ) => {
      const x = Ref.random(src, seed);
      assertMatches(broadcastTo(x.tensor(), out), Ref.build(out, (idx) => x.atBroadcast(idx)));
    }),
    { numRuns: RUNS },
  );
});

Deno.test("reshape keeps row-major order", () => {
  fc.assert(
    fc.property(shapeArb(0, 4), seedArb, (shape, seed) => {
      const x = Ref.random(shape, seed);
      const to = [...shape].reverse();
      assertMatches(reshape(x.tensor(), to), new Ref(x.values, to));
      assertMatches(reshape(x.tensor(), [-1]), new Ref(x.values, [size(shape)]));
    }),
    { numRuns: RUNS },
  );
});

Deno.test("permute and transpose move axes", () => {
  const arb = shapeArb(1, 4).chain((s) =>
    fc.tuple(fc.constant(s), fc.shuffledSubarray([...s.keys()], { minLength: s.length, maxLength: s.length }))
  );
  fc.assert(
    fc.property(arb, seedArb, ([shape, perm], seed) => {
      const x = Ref.random(shape, seed);
      const outShape = perm.map((p) => shape[p]);
      const expected = Ref.build(outShape, (idx) => {
        const src = new Array<number>(shape.length);
        perm.forEach((p, i) => (src[p] = idx[i]));
        return x.at(src);
      });
      assertMatches(permute(x.tensor(), perm), expected);
      const [d0, d1] = [perm[0], shape.length - 1];
      const tShape = [...shape];
      [tShape[d0], tShape[d1]] = [tShape[d1], tShape[d0]];
      const tExpected = Ref.build(tShape, (idx) => {
        const src = [...idx];
        [src[d0], src[d1]] = [src[d1], src[d0]];
        return x.at(src);
      });
      assertMatches(transpose(x.tensor(), d0, -1), tExpected);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("concat and slice place and select values along any dim", () => {
  const arb = shapeArb(1, 3).chain((s) =>
    fc.tuple(
      fc.constant(s),
      fc.integer({ min: 0, max: s.length - 1 }),
      fc.array(dimArb, { minLength: 1, maxLength: 3 }),
    )
  );
  fc.assert(
    fc.property(arb, seedArb, ([shape, dim, lens], seed) => {
      const parts = lens.map((len, i) => Ref.random(shape.map((d, j) => (j === dim ? len : d)), seed + i));
      const total = lens.reduce((p, l) => p + l, 0);
      const outShape = shape.map((d, j) => (j === dim ? total : d));
      const expected = Ref.build(outShape, (idx) => {
        let k = idx[dim];
        for (const p of parts) {
          if (k < p.shape[dim]) return p.at(idx.map((v, j) => (j === dim ? k : v)));
          k -= p.shape[dim];
        }
        throw new Error("unreachable");
      });
      const joined = concat(parts.map((p) => p.tensor()), dim);
      assertMatches(joined, expected);
      // Slicing the concatenation back out recovers each part.
      let offset = 0;
      for (const p of parts) {
        assertMatches(slice(joined, dim, offset, offset + p.shape[dim]), p);
        offset += p.shape[dim];
      }
    }),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------------------------------------------------
// Products

Deno.test("matmul equals a naive triple loop, batched with broadcast batch dims", () => {
  const arb = fc.tuple(
    broadcastPairArb.filter(([out]) => out.length <= 3),
    dimArb,
    dimArb,
    dimArb,
  );
  fc.assert(
    fc.property(arb, seedArb, ([[batch, ba, bb], m, k, n], seed) => {
      const a = Ref.dyadic([...ba, m, k], seed), b = Ref.dyadic([...bb, k, n], seed + 1);
      const expected = Ref.build([...batch, m, n], (idx) => {
        const bIdx = idx.slice(0, -2), [i, j] = idx.slice(-2);
        let s = 0;
        for (let p = 0; p < k; p++) {
          s += new Ref(a.values, a.shape).atBroadcast([...bIdx, i, p]) *
            new Ref(b.values, b.shape).atBroadcast([...bIdx, p, j]);
        }
        return s;
      });
      assertMatches(matmul(a.tensor(), b.tensor()), expected);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("linear is x Wᵀ + b over any leading dims", () => {
  fc.assert(
    fc.property(shapeArb(0, 2), dimArb, dimArb, fc.boolean(), seedArb, (lead, inF, outF, withBias, seed) => {
      const x = Ref.dyadic([...lead, inF], seed),
        w = Ref.dyadic([outF, inF], seed + 1),
        b = Ref.dyadic([outF], seed + 2);
      const expected = Ref.build([...lead, outF], (idx) => {
        const o = idx[idx.length - 1];
        let s = withBias ? b.values[o] : 0;
        for (let i = 0; i < inF; i++) s += x.at([...idx.slice(0, -1), i]) * w.at([o, i]);
        return s;
      });
      assertMatches(linear(x.tensor(), w.tensor(), withBias ? b.tensor() : null), expected);
    }),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------------------------------------------------
// Normalisation, lookups, losses

Deno.test("softmax and logSoftmax along any dim equal the textbook formulas", () => {
  const arb = shapeArb(1, 4).chain((s) =>
    fc.tuple(fc.constant(s), fc.integer({ min: -s.length, max: s.length - 1 }))
  );
  fc.assert(
    fc.property(arb, seedArb, ([shape, dim], seed) => {
      const x = Ref.random(shape, seed);
      const d = dim < 0 ? dim + shape.length : dim;
      const line = (idx: number[]) =>
        Array.from({ length: shape[d] }, (_, j) => x.at(idx.map((v, i) => (i === d ? j : v))));
      const max = (idx: number[]) => Math.max(...line(idx));
      // Shifted by the line's max, as the stable textbook form: log-probabilities of single-element
      // lines come out exactly 0.
      const denom = (idx: number[]) => line(idx).reduce((s, v) => s + Math.exp(v - max(idx)), 0);
      assertMatches(
        softmax(x.tensor(), dim),
        Ref.build(shape, (idx) => Math.exp(x.at(idx) - max(idx)) / denom(idx)),
        1e-14,
      );
      assertMatches(
        logSoftmax(x.tensor(), dim),
        Ref.build(shape, (idx) => x.at(idx) - max(idx) - Math.log(denom(idx))),
        1e-14,
      );
    }),
    { numRuns: RUNS },
  );
});

Deno.test("softmax is stable for large logits", () => {
  const y = softmax(tensor([1000, 1000, -1000, 999], [4], F64)).dataSync();
  assert.ok(y.every(Number.isFinite));
  assert.ok(Math.abs(y[0] - y[1]) < 1e-15 && y[2] === 0);
  assert.ok(Math.abs(y[0] + y[1] + y[3] - 1) < 1e-15);
  const l = logSoftmax(tensor([1000, -1000], [2], F64)).dataSync();
  assert.deepEqual([...l], [0, -2000]);
});

Deno.test("rmsNorm is x / sqrt(mean(x²) + eps) · weight over the last dim", () => {
  fc.assert(
    fc.property(shapeArb(1, 3), fc.constantFrom(0, 1e-6, 0.5), seedArb, (shape, eps, seed) => {
      const x = Ref.random(shape, seed), w = Ref.random([shape[shape.length - 1]], seed + 1);
      const n = shape[shape.length - 1];
      const expected = Ref.build(shape, (idx) => {
        let ms = 0;
        for (let j = 0; j < n; j++) ms += x.at([...idx.slice(0, -1), j]) ** 2;
        return (x.at(idx) / Math.sqrt(ms / n + eps)) * w.values[idx[idx.length - 1]];
      });
      assertMatches(rmsNorm(x.tensor(), w.tensor(), eps), expected, 1e-14);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("embedding gathers rows for ids of any shape; out-of-range ids are ShapeErrors", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 6 }),
      dimArb,
      shapeArb(1, 2),
      seedArb,
      (rows, dim, idShape, seed) => {
        const table = Ref.random([rows, dim], seed);
        const rng = new Rng(seed + 1);
        const ids = Array.from({ length: size(idShape) }, () => Math.floor(rng.uniform() * rows));
        const idRef = new Ref(Float64Array.from(ids), idShape);
        const expected = Ref.build(
          [...idShape, dim],
          (idx) => table.at([idRef.at(idx.slice(0, -1)), idx[idx.length - 1]]),
        );
        assertMatches(embedding({ data: ids, shape: idShape }, table.tensor()), expected);
        assert.throws(
          () => embedding([rows], table.tensor()),
          (e: Error) => e instanceof ShapeError && e.message.includes(`${rows}`),
        );
        assert.throws(() => embedding([-1], table.tensor()), ShapeError);
        assert.throws(() => embedding([0.5], table.tensor()), ShapeError);
      },
    ),
    { numRuns: RUNS },
  );
});

Deno.test("crossEntropy is the mean negative log-likelihood over non-ignored rows", () => {
  fc.assert(
    fc.property(dimArb, fc.integer({ min: 2, max: 5 }), seedArb, (n, c, seed) => {
      const logits = Ref.random([n, c], seed);
      const rng = new Rng(seed + 2);
      const targets = Array.from(
        { length: n },
        (_, i) => (i > 0 && rng.uniform() < 0.4 ? -100 : Math.floor(rng.uniform() * c)),
      );
      let total = 0, count = 0;
      targets.forEach((t, i) => {
        if (t === -100) return;
        let z = 0;
        for (let j = 0; j < c; j++) z += Math.exp(logits.at([i, j]));
        total += Math.log(z) - logits.at([i, t]);
        count++;
      });
      const loss = crossEntropy(logits.tensor(), targets);
      assert.deepEqual([...loss.shape], []);
      assert.ok(relErr(loss.dataSync(), [total / count]) < 1e-14);
      assert.ok(
        relErr(crossEntropy(logits.tensor(), Int32Array.from(targets)).dataSync(), [total / count]) < 1e-14,
      );
    }),
    { numRuns: RUNS },
  );
  // Every row ignored: NaN, as in PyTorch.
  assert.ok(Number.isNaN(crossEntropy(tensor([1, 2], [1, 2], F64), [-100]).dataSync()[0]));
  assert.throws(() => crossEntropy(tensor([1, 2], [1, 2], F64), [2]), ShapeError);
  assert.throws(() => crossEntropy(tensor([1, 2], [1, 2], F64), [0, 1]), ShapeError);
});

// ---------------------------------------------------------------------------------------------------
// Dropout

Deno.test("dropout zeroes about p of the elements and scales the rest by 1/(1−p)", () => {
  for (const p of [0.1, 0.5, 0.9]) {
    const n = 20_000;
    const x = tensor(new Float64Array(n).fill(1), [n], F64);
    const y = dropout(x, p, { seed: 42 }).dataSync();
    const keep = dropoutKeepScale(p);
    let dropped = 0;
    for (const v of y) {
      if (v === 0) dropped++;
      else assert.equal(v, keep);
    }
    // Binomial standard deviation is at most 0.0035 of n here; allow five of them.
    assert.ok(Math.abs(dropped / n - p) < 0.018, `p=${p}: dropped ${dropped / n}`);
  }
});

Deno.test("dropout with a seed is x ⊙ dropoutMask(seed), reproducible, different across seeds", () => {
  fc.assert(
    fc.property(
      shapeArb(1, 3),
      fc.double({ min: 0.05, max: 0.95, noNaN: true }),
      seedArb,
      (shape, p, seed) => {
        const x = Ref.random(shape, seed);
        const mask = dropoutMask(x.tensor(), p, seed).dataSync();
        const y = dropout(x.tensor(), p, { seed });
        assertMatches(y, new Ref(x.values.map((v, i) => v * mask[i]), shape));
        assertMatches(dropout(x.tensor(), p, { seed }), new Ref(y.dataSync() as Float64Array, shape));
      },
    ),
    { numRuns: RUNS },
  );
  const ones = tensor(new Float64Array(256).fill(1), [256], F64);
  assert.notDeepEqual([...dropout(ones, 0.5, { seed: 1 }).dataSync()], [
    ...dropout(ones, 0.5, { seed: 2 }).dataSync(),
  ]);
});

Deno.test("dropout is the identity when not training or p = 0; p outside [0, 1) is a ConfigError", () => {
  const x = Ref.random([3, 4], 1);
  assertMatches(dropout(x.tensor(), 0.5, { training: false, seed: 3 }), x);
  assertMatches(dropout(x.tensor(), 0, { seed: 3 }), x);
  for (const p of [-0.1, 1, 1.5, NaN]) {
    assert.throws(
      () => dropout(x.tensor(), p),
      (e: Error) => e instanceof ConfigError && /dropout/.test(e.message),
    );
  }
});
