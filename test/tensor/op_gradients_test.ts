/**
 * Gradient of every differentiable op against central finite differences, in f64 on the CPU, over
 * random shapes. For an op f we take a random linear functional L = sum(f(inputs) ⊙ R): its analytic
 * gradient comes from backward(), its numeric one from (L(x + h) − L(x − h)) / 2h per input element.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  add,
  broadcastTo,
  cast,
  concat,
  cos,
  cpuDevice,
  crossEntropy,
  div,
  dropout,
  embedding,
  exp,
  linear,
  log,
  logSoftmax,
  loraLinear,
  matmul,
  maximum,
  mean,
  mul,
  neg,
  noGrad,
  permute,
  relu,
  reshape,
  rmsNorm,
  rsqrt,
  scale,
  sigmoid,
  silu,
  sin,
  slice,
  softmax,
  sqrt,
  square,
  sub,
  sum,
  type Tensor,
  tensor,
  transpose,
} from "../../mod.ts";
import { dropoutMask, pick } from "../../src/tensor/mod.ts";
import { Rng } from "../../src/core/random.ts";
import { relErr } from "../helpers.ts";

const F64 = { device: cpuDevice(), dtype: "f64" as const };
const H = 1e-5;
const TOL = 1e-6;
const RUNS = 40;

/** One op input: its values and shape; `grad: false` keeps it out of the check (a constant). */
interface Input {
  values: Float64Array;
  shape: number[];
  grad?: boolean;
}

const size = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

/** Values drawn from N(0, 1) with a seed. */
function normal(shape: number[], seed: number): Input {
  const rng = new Rng(seed);
  return { values: Float64Array.from({ length: size(shape) }, () => rng.normal()), shape };
}

/** Values uniform in [lo, hi), each negated with probability 1/2 when `signed`. */
function uniform(shape: number[], seed: number, lo: number, hi: number, signed = false): Input {
  const rng = new Rng(seed);
  const draw = () => {
    const v = lo + (hi - lo) * rng.uniform();
    return signed && rng.uniform() < 0.5 ? -v : v;
  };
  return { values: Float64Array.from({ length: size(shape) }, draw), shape };
}

const toTensor = (inp: Input, values = inp.values, requiresGrad = false) =>
  tensor(values, inp.shape, { ...F64, requiresGrad });

/** L = sum(y ⊙ r) on the host. */
function functional(y: Tensor, r: Float64Array): number {
  const v = y.dataSync();
  assert.equal(v.length, r.length);
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * r[i];
  return s;
}

/**
 * Asserts the analytic gradient of L = sum(f(...inputs) ⊙ R) w.r.t. every input with `grad !== false`
 * matches central differences within relative error `tol`.
 */
function gradCheck(f: (...xs: Tensor[]) => Tensor, inputs: Input[], seed: number, tol = TOL): void {
  const ts = inputs.map((inp) => toTensor(inp, inp.values, inp.grad !== false));
  const y = f(...ts);
  assert.equal(y.dtype, "f64");
  assert.ok(y.requiresGrad, "the output of an op on tensors that require grad must require grad");
  const r = normal([...y.shape], seed ^ 0x5a5a).values;
  const loss = sum(mul(y, tensor(r, y.shape, F64)));
  loss.backward();
  inputs.forEach((inp, i) => {
    if (inp.grad === false) {
      assert.equal(ts[i].grad, null, `input ${i} does not require grad, so it gets no .grad`);
      return;
    }
    const g = ts[i].grad;
    assert.ok(g !== null, `input ${i} [${inp.shape}] got no gradient`);
    assert.deepEqual([...g.shape], inp.shape, `gradient shape of input ${i}`);
    assert.equal(g.dtype, "f64");
    const analytic = g.dataSync();
    const numeric = new Float64Array(inp.values.length);
    const evalAt = (j: number, delta: number) => {
      const v = Float64Array.from(inp.values);
      v[j] += delta;
      return noGrad(() => functional(f(...inputs.map((o, k) => toTensor(o, k === i ? v : o.values))), r));
    };
    for (let j = 0; j < numeric.length; j++) numeric[j] = (evalAt(j, H) - evalAt(j, -H)) / (2 * H);
    const e = relErr(analytic, numeric);
    assert.ok(
      e <= tol,
      `input ${i} [${inp.shape}]: relative error ${e} (analytic ${analytic}, numeric ${numeric})`,
    );
  });
}

// ---------------------------------------------------------------------------------------------------
// Arbitraries

const dimArb = fc.integer({ min: 1, max: 4 });
const shapeArb = (minRank: number, maxRank: number) =>
  fc.array(dimArb, { minLength: minRank, maxLength: maxRank });
const seedArb = fc.integer({ min: 0, max: 2 ** 31 - 1 });

/** A shape that broadcasts to `out`: some leading dims dropped, some dims set to 1. */
function broadcastSource(out: number[]): fc.Arbitrary<number[]> {
  return fc.tuple(
    fc.integer({ min: 0, max: out.length }),
    fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
  )
    .map(([cut, ones]) => out.slice(cut).map((d, i) => (ones[i] ? 1 : d)));
}

/** An output shape (rank 0..4) and two operand shapes broadcasting to it. */
const broadcastPairArb = shapeArb(0, 4).chain((out) =>
  fc.tuple(fc.constant(out), broadcastSource(out), broadcastSource(out))
);

/** How a binary op gets its operands: two tensors, or a number on one side. */
const operandModeArb = fc.constantFrom("tensors", "number-left", "number-right");

// ---------------------------------------------------------------------------------------------------
// Element-wise

const binaryOps = {
  add,
  sub,
  mul,
  div,
} as const;

for (const [name, op] of Object.entries(binaryOps)) {
  Deno.test(`gradient of ${name} with broadcasting, scalars and different ranks`, () => {
    fc.assert(
      fc.property(broadcastPairArb, operandModeArb, seedArb, fc.double({ min: 0.5, max: 2, noNaN: true }), (
        [, sa, sb],
        mode,
        seed,
        c,
      ) => {
        const a = normal(sa, seed);
        // Divisors stay away from zero so that the quotient is smooth around every sample.
        const b = name === "div" ? uniform(sb, seed + 1, 0.5, 2, true) : normal(sb, seed + 1);
        if (mode === "tensors") gradCheck((x, y) => op(x, y), [a, b], seed);
        else if (mode === "number-left") gradCheck((y) => op(c, y), [b], seed);
        else gradCheck((x) => op(x, -c), [a], seed);
      }),
      { numRuns: RUNS },
    );
  });
}

Deno.test("gradient of maximum with broadcasting, away from ties, both operand orders", () => {
  fc.assert(
    fc.property(broadcastPairArb, fc.boolean(), seedArb, ([, sa, sb], swap, seed) => {
      // |big| ≥ 1 and |small| ≤ 0.5, so the winner is clear everywhere and both sides win somewhere.
      const big = uniform(sa, seed, 1, 2, true);
      const small = uniform(sb, seed + 1, -0.5, 0.5);
      gradCheck((x, y) => (swap ? maximum(y, x) : maximum(x, y)), [big, small], seed);
    }),
    { numRuns: RUNS },
  );
});

/** Unary ops with the input domain that keeps them smooth. */
const unaryOps: [string, (x: Tensor) => Tensor, (shape: number[], seed: number) => Input][] = [
  ["neg", neg, normal],
  ["exp", exp, normal],
  ["log", log, (s, seed) => uniform(s, seed, 0.3, 3)],
  ["sqrt", sqrt, (s, seed) => uniform(s, seed, 0.3, 3)],
  ["rsqrt", rsqrt, (s, seed) => uniform(s, seed, 0.3, 3)],
  ["sigmoid", sigmoid, normal],
  ["silu", silu, normal],
  ["relu", relu, (s, seed) => uniform(s, seed, 0.1, 2, true)],
  ["square", square, normal],
  ["sin", sin, (s, seed) => uniform(s, seed, -4, 4)],
  ["cos", cos, (s, seed) => uniform(s, seed, -4, 4)],
];

for (const [name, op, domain] of unaryOps) {
  Deno.test(`gradient of ${name}`, () => {
    fc.assert(
      fc.property(shapeArb(0, 3), seedArb, (shape, seed) => gradCheck(op, [domain(shape, seed)], seed)),
      { numRuns: RUNS },
    );
  });
}

Deno.test("gradient of scale by any finite factor", () => {
  fc.assert(
    fc.property(shapeArb(0, 3), seedArb, fc.double({ min: -10, max: 10, noNaN: true }), (shape, seed, s) => {
      gradCheck((x) => scale(x, s), [normal(shape, seed)], seed);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("cast f64 → f32 rounds each value like Math.fround; f32 → f64 is exact", () => {
  fc.assert(
    fc.property(shapeArb(0, 3), seedArb, (shape, seed) => {
      const x = normal(shape, seed);
      const t32 = cast(toTensor(x), "f32");
      assert.equal(t32.dtype, "f32");
      assert.deepEqual([...t32.shape], shape);
      const v32 = t32.dataSync();
      assert.ok(v32 instanceof Float32Array);
      assert.deepEqual([...v32], [...x.values].map(Math.fround));
      const back = cast(t32, "f64");
      assert.equal(back.dtype, "f64");
      assert.ok(back.dataSync() instanceof Float64Array);
      assert.deepEqual([...back.dataSync()], [...v32]);
    }),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------------------------------------------------
// Reductions and broadcasting

/** A shape, a dim argument for it (undefined, a number or a list, negatives included) and keepDim. */
const reductionArb = shapeArb(0, 4).chain((shape) =>
  fc.tuple(
    fc.constant(shape),
    shape.length === 0 ? fc.constant(undefined) : fc.oneof(
      fc.constant(undefined),
      fc.integer({ min: -shape.length, max: shape.length - 1 }),
      fc.subarray([...shape.keys()]).chain((dims) =>
        fc.tuple(...dims.map((d) => fc.constantFrom(d, d - shape.length))).map((ds) => ds as number[])
      ),
    ),
    fc.boolean(),
  )
);

for (const [name, op] of [["sum", sum], ["mean", mean]] as const) {
  Deno.test(`gradient of ${name} over any dims, with and without keepDim`, () => {
    fc.assert(
      fc.property(reductionArb, seedArb, ([shape, dim, keepDim], seed) => {
        gradCheck((x) => op(x, dim, keepDim), [normal(shape, seed)], seed);
      }),
      { numRuns: RUNS },
    );
  });
}

Deno.test("gradient of broadcastTo", () => {
  fc.assert(
    fc.property(shapeArb(0, 4).chain((out) => fc.tuple(fc.constant(out), broadcastSource(out))), seedArb, (
      [out, src],
      seed,
    ) => gradCheck((x) => broadcastTo(x, out), [normal(src, seed)], seed)),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------------------------------------------------
// Shape ops

/** A shape and another with the same element count: dims shuffled, merged, or with a −1. */
const reshapeArb = shapeArb(0, 4).chain((shape) =>
  fc.tuple(
    fc.constant(shape),
    fc.oneof(
      fc.shuffledSubarray(shape, { minLength: shape.length, maxLength: shape.length }),
      fc.constant([size(shape)]),
      fc.constant(shape.length > 1 ? [shape[0] * shape[1], ...shape.slice(2)] : [...shape, 1]),
      fc.constant(shape.length > 0 ? [-1, ...shape.slice(1)] : [1, -1]),
    ),
  )
);

Deno.test("gradient of reshape (including −1)", () => {
  fc.assert(
    fc.property(reshapeArb, seedArb, ([shape, to], seed) => {
      gradCheck((x) => reshape(x, to), [normal(shape, seed)], seed);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("gradient of permute", () => {
  fc.assert(
    fc.property(
      shapeArb(1, 4).chain((s) =>
        fc.tuple(
          fc.constant(s),
          fc.shuffledSubarray([...s.keys()], { minLength: s.length, maxLength: s.length }),
        )
      ),
      seedArb,
      ([shape, perm], seed) => gradCheck((x) => permute(x, perm), [normal(shape, seed)], seed),
    ),
    { numRuns: RUNS },
  );
});

Deno.test("gradient of transpose (negative dims too)", () => {
  fc.assert(
    fc.property(
      shapeArb(1, 4).chain((s) =>
        fc.tuple(
          fc.constant(s),
          fc.integer({ min: -s.length, max: s.length - 1 }),
          fc.integer({ min: -s.length, max: s.length - 1 }),
        )
      ),
      seedArb,
      ([shape, d0, d1], seed) => gradCheck((x) => transpose(x, d0, d1), [normal(shape, seed)], seed),
    ),
    { numRuns: RUNS },
  );
});

Deno.test("gradient of concat of 1 to 3 tensors along any dim", () => {
  const arb = shapeArb(1, 3).chain((s) =>
    fc.tuple(
      fc.constant(s),
      fc.integer({ min: 0, max: s.length - 1 }),
      fc.array(dimArb, { minLength: 1, maxLength: 3 }),
      fc.boolean(),
    )
  );
  fc.assert(
    fc.property(arb, seedArb, ([shape, dim, lens, negDim], seed) => {
      const inputs = lens.map((len, i) => normal(shape.map((d, j) => (j === dim ? len : d)), seed + i));
      gradCheck((...xs) => concat(xs, negDim ? dim - shape.length : dim), inputs, seed);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("gradient of slice along any dim", () => {
  const arb = shapeArb(1, 3).chain((s) =>
    fc.integer({ min: 0, max: s.length - 1 }).chain((dim) =>
      fc.tuple(fc.constant(s), fc.constant(dim), fc.integer({ min: 0, max: s[dim] - 1 }))
        .chain(([s, dim, start]) =>
          fc.tuple(
            fc.constant(s),
            fc.constant(dim),
            fc.constant(start),
            fc.integer({ min: start + 1, max: s[dim] }),
          )
        )
    )
  );
  fc.assert(
    fc.property(arb, seedArb, ([shape, dim, start, end], seed) => {
      gradCheck((x) => slice(x, dim, start, end), [normal(shape, seed)], seed);
    }),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------------------------------------------------
// Matrix products

Deno.test("gradient of matmul, batched with broadcast batch dims", () => {
  const arb = fc.tuple(
    shapeArb(0, 3).chain((out) => fc.tuple(broadcastSource(out), broadcastSource(out))),
    dimArb,
    dimArb,
    dimArb,
  );
  fc.assert(
    fc.property(arb, seedArb, ([[ba, bb], m, k, n], seed) => {
      const a = normal([...ba, m, k], seed), b = normal([...bb, k, n], seed + 1);
      gradCheck(matmul, [a, b], seed);
    }),
    { numRuns: 60 },
  );
});

Deno.test("gradient of linear with and without bias on 1-D, 2-D and 3-D inputs", () => {
  fc.assert(
    fc.property(shapeArb(0, 2), dimArb, dimArb, fc.boolean(), seedArb, (lead, inF, outF, withBias, seed) => {
      const x = normal([...lead, inF], seed), w = normal([outF, inF], seed + 1), b = normal([outF], seed + 2);
      if (withBias) gradCheck((x, w, b) => linear(x, w, b), [x, w, b], seed);
      else gradCheck((x, w) => linear(x, w), [x, w], seed);
    }),
    { numRuns: 60 },
  );
});

// ---------------------------------------------------------------------------------------------------
// Normalisation, lookups, losses, dropout

const anyDimArb = shapeArb(1, 4).chain((s) =>
  fc.tuple(fc.constant(s), fc.integer({ min: -s.length, max: s.length - 1 }))
);

for (const [name, op] of [["softmax", softmax], ["logSoftmax", logSoftmax]] as const) {
  Deno.test(`gradient of ${name} along any dim`, () => {
    fc.assert(
      fc.property(
        anyDimArb,
        seedArb,
        ([shape, dim], seed) => gradCheck((x) => op(x, dim), [normal(shape, seed)], seed),
      ),
      { numRuns: RUNS },
    );
  });
}

Deno.test("gradient of rmsNorm w.r.t. input and weight", () => {
  fc.assert(
    fc.property(shapeArb(0, 2), fc.constantFrom(1e-6, 0.1, 1), seedArb, (lead, eps, seed) => {
      // One feature with a tiny eps normalises to ±1 with a near-zero slope, which central differences
      // cannot resolve; at least two features keep the gradient well conditioned.
      const shape = [...lead, 2 + (seed % 3)];
      const w = normal([shape[shape.length - 1]], seed + 1);
      gradCheck((x, w) => rmsNorm(x, w, eps), [normal(shape, seed), w], seed);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("gradient of embedding w.r.t. the table, repeated ids summed", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 5 }),
      dimArb,
      shapeArb(1, 2),
      fc.constantFrom("array", "Int32Array", "tensor"),
      seedArb,
      (rows, dim, idShape, form, seed) => {
        const rng = new Rng(seed + 7);
        const ids = Array.from({ length: size(idShape) }, () => Math.floor(rng.uniform() * rows));
        const given = form === "Int32Array"
          ? Int32Array.from(ids)
          : form === "tensor"
          ? tensor(ids, idShape)
          : idShape.length === 2
          ? Array.from({ length: idShape[0] }, (_, i) => ids.slice(i * idShape[1], (i + 1) * idShape[1]))
          : ids;
        gradCheck((w) => embedding(given, w), [normal([rows, dim], seed)], seed);
      },
    ),
    { numRuns: RUNS },
  );
});

Deno.test("gradient of pick, negative indices picking nothing", () => {
  fc.assert(
    fc.property(dimArb, dimArb, seedArb, (rows, n, seed) => {
      const rng = new Rng(seed + 3);
      const idx = Int32Array.from({ length: rows }, () => Math.floor(rng.uniform() * (n + 1)) - 1);
      gradCheck((x) => pick(x, idx), [normal([rows, n], seed)], seed);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("gradient of crossEntropy with ignored targets (default and custom ignoreIndex)", () => {
  fc.assert(
    fc.property(dimArb, fc.integer({ min: 2, max: 5 }), fc.boolean(), seedArb, (n, c, custom, seed) => {
      const rng = new Rng(seed + 5);
      const ignore = custom ? 0 : -100;
      // Row 0 always counts, so the mean is over at least one target.
      const targets = Array.from({ length: n }, (_, i) => {
        const t = 1 + Math.floor(rng.uniform() * (c - 1));
        return i > 0 && rng.uniform() < 0.3 ? ignore : t;
      });
      const opts = custom ? { ignoreIndex: ignore } : {};
      gradCheck((x) => crossEntropy(x, targets, opts), [normal([n, c], seed)], seed);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("gradient of dropout with a fixed seed is the mask", () => {
  fc.assert(
    fc.property(shapeArb(1, 3), fc.double({ min: 0.1, max: 0.7, noNaN: true }), seedArb, (shape, p, seed) => {
      gradCheck((x) => dropout(x, p, { seed }), [normal(shape, seed)], seed);
      const x = toTensor(normal(shape, seed), undefined, true);
      const y = dropout(x, p, { seed });
      y.backward(tensor(new Float64Array(size(shape)).fill(1), shape, F64));
      assert.deepEqual([...x.grad!.dataSync()], [...dropoutMask(x, p, seed).dataSync()]);
    }),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------------------------------------------------
// The fused LoRA function

Deno.test("gradient of loraLinear (x, W, b, A, B) with dropout none, pre and post", () => {
  fc.assert(
    fc.property(
      shapeArb(0, 2),
      dimArb,
      dimArb,
      fc.integer({ min: 1, max: 3 }),
      fc.boolean(),
      fc.constantFrom("none", "pre", "post"),
      fc.double({ min: 0.25, max: 4, noNaN: true }),
      seedArb,
      (lead, inF, outF, rank, withBias, drop, s, seed) => {
        const dropoutArg = drop === "none" ? null : { p: 0.4, seed: seed ^ 0x77, position: drop };
        const x = normal([...lead, inF], seed),
          w = normal([outF, inF], seed + 1),
          b = normal([outF], seed + 2);
        const a = normal([rank, inF], seed + 3), bb = normal([outF, rank], seed + 4);
        if (withBias) {
          gradCheck((x, w, b, a, bb) => loraLinear(x, w, b, a, bb, s, dropoutArg), [x, w, b, a, bb], seed);
        } else {
          gradCheck((x, w, a, bb) => loraLinear(x, w, null, a, bb, s, dropoutArg), [x, w, a, bb], seed);
        }
      },
    ),
    { numRuns: 80 },
  );
});

Deno.test("gradient of loraLinear with a frozen base: only x, A and B get gradients", () => {
  fc.assert(
    fc.property(shapeArb(0, 2), dimArb, dimArb, seedArb, (lead, inF, outF, seed) => {
      const x = normal([...lead, inF], seed);
      const w = { ...normal([outF, inF], seed + 1), grad: false };
      const b = { ...normal([outF], seed + 2), grad: false };
      const a = normal([2, inF], seed + 3), bb = normal([outF, 2], seed + 4);
      gradCheck((x, w, b, a, bb) => loraLinear(x, w, b, a, bb, 2, null), [x, w, b, a, bb], seed);
    }),
    { numRuns: RUNS },
  );
});
