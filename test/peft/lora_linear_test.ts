/**
 * The rules of NeMo AutoModel's LinearLoRA module, as ours follows them: `LinearLoRA` / `patchLinearModule` share and freeze the base weights,
 * add lora_A / lora_B with scale = alpha / dim and B = 0, initialise A as Xavier normal or
 * kaiming-uniform (a = √5) — checked statistically with fixed seeds — place dropout before A or after
 * the scaled branch with a seeded mask, turn dropout off in eval mode, patch shape-only Linears, and give
 * the same numbers through the fused function and the composed ops.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  ConfigError,
  cpuDevice,
  DeviceError,
  isLoraLinear,
  Linear,
  LinearLoRA,
  type LinearLoRAOptions,
  patchLinearModule,
  RMSNorm,
  sum,
  type Tensor,
  tensor,
  zeros,
} from "../../mod.ts";
import { dropoutMask } from "../../src/tensor/mod.ts";
import { Rng } from "../../src/core/random.ts";
import { relErr } from "../helpers.ts";

const F64 = { device: cpuDevice(), dtype: "f64" as const };
const values = (t: Tensor) => [...t.dataSync()];
const size = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

function normal(n: number, seed: number, std = 1): Float64Array {
  const rng = new Rng(seed);
  return Float64Array.from({ length: n }, () => rng.normal() * std);
}

function moments(v: ArrayLike<number>): { mean: number; std: number; kurtosis: number } {
  let m = 0;
  for (let i = 0; i < v.length; i++) m += v[i];
  m /= v.length;
  let m2 = 0, m4 = 0;
  for (let i = 0; i < v.length; i++) {
    const d = (v[i] - m) ** 2;
    m2 += d;
    m4 += d * d;
  }
  m2 /= v.length;
  return { mean: m, std: Math.sqrt(m2), kurtosis: m4 / v.length / (m2 * m2) };
}

/** Geometry of one LoRA layer test case. */
interface Case {
  lead: number[];
  inF: number;
  outF: number;
  rank: number;
  bias: boolean;
  seed: number;
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  lead: fc.array(fc.integer({ min: 1, max: 3 }), { maxLength: 2 }),
  inF: fc.integer({ min: 1, max: 6 }),
  outF: fc.integer({ min: 1, max: 6 }),
  rank: fc.integer({ min: 1, max: 3 }),
  bias: fc.boolean(),
  seed: fc.integer({ min: 0, max: 2 ** 30 }),
});

/** A patched f64 layer with random base and adapter weights (B non-zero so the branch shows). */
function makeLayer(c: Case, opts: LinearLoRAOptions, dtype: "f64" | "f32" = "f64"): LinearLoRA {
  const base = new Linear(c.inF, c.outF, { bias: c.bias, dtype, seed: c.seed });
  const layer = patchLinearModule(base, { dim: c.rank, alpha: 3 * c.rank, seed: c.seed + 1, ...opts });
  layer.lora_B.loadStateDict({
    weight: { shape: [c.outF, c.rank], data: normal(c.outF * c.rank, c.seed + 2) },
  });
  return layer;
}

/** Host reference: y = x Wᵀ + b + scale · post(B(A(pre(x)))) with explicit masks (1 where absent). */
function reference(
  layer: LinearLoRA,
  x: Float64Array,
  m: number,
  preMask: ArrayLike<number> | null,
  postMask: ArrayLike<number> | null,
): Float64Array {
  const K = layer.inFeatures, N = layer.outFeatures, R = layer.dim;
  const W = layer.weight.dataSync(), A = layer.lora_A.weight.dataSync(), B = layer.lora_B.weight.dataSync();
  const b = layer.bias?.dataSync();
  const y = new Float64Array(m * N);
  for (let i = 0; i < m; i++) {
    const xd = Array.from({ length: K }, (_, k) => x[i * K + k] * (preMask ? preMask[i * K + k] : 1));
    const t = Array.from({ length: R }, (_, r) => xd.reduce((s, v, k) => s + v * A[r * K + k], 0));
    for (let o = 0; o < N; o++) {
      let base = b ? b[o] : 0;
      for (let k = 0; k < K; k++) base += x[i * K + k] * W[o * K + k];
      const lora = layer.scale * t.reduce((s, v, r) => s + v * B[o * R + r], 0);
      y[i * N + o] = base + lora * (postMask ? postMask[i * N + o] : 1);
    }
  }
  return y;
}

// ---------------------------------------------------------------------------------------------------
// Structure

Deno.test("LinearLoRA shares and freezes the base weight and bias; adds trainable lora_A / lora_B", () => {
  const base = new Linear(6, 4, { seed: 1 });
  const [w, b] = [base.weight, base.bias!];
  const wValues = values(w);
  const layer = new LinearLoRA(base);
  assert.ok(layer instanceof Linear && isLoraLinear(layer));
  assert.equal(layer.weight, w);
  assert.equal(layer.bias, b);
  assert.equal(w.requiresGrad, false);
  assert.equal(b.requiresGrad, false);
  assert.deepEqual(values(layer.weight), wValues);
  assert.ok(layer.lora_A instanceof Linear && layer.lora_B instanceof Linear);
  assert.equal(layer.lora_A.bias, null);
  assert.equal(layer.lora_B.bias, null);
  assert.ok(layer.lora_A.weight.requiresGrad && layer.lora_B.weight.requiresGrad);
  assert.deepEqual([...layer.lora_A.weight.shape], [8, 6]);
  assert.deepEqual([...layer.lora_B.weight.shape], [4, 8]);
  assert.deepEqual(layer.namedParameters().map(([n]) => n), [
    "weight",
    "bias",
    "lora_A.weight",
    "lora_B.weight",
  ]);
  assert.equal(layer.dim, 8);
  assert.equal(layer.scale, 32 / 8);
  assert.ok(values(layer.lora_B.weight).every((v) => v === 0));
  assert.equal(layer.inFeatures, 6);
  assert.equal(layer.outFeatures, 4);
});

Deno.test("scale is alpha / dim and B starts at zero for any rank and alpha", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 32 }),
      fc.double({ min: 0.1, max: 256, noNaN: true }),
      (dim, alpha) => {
        const layer = new LinearLoRA(new Linear(5, 3), { dim, alpha });
        assert.equal(layer.scale, alpha / dim);
        assert.equal(layer.alpha, alpha);
        assert.ok(values(layer.lora_B.weight).every((v) => v === 0));
        assert.deepEqual([...layer.lora_A.weight.shape], [dim, 5]);
      },
    ),
    { numRuns: 30 },
  );
});

Deno.test("with B = 0 a new adapter leaves the base output unchanged, on both paths", () => {
  fc.assert(
    fc.property(caseArb, fc.boolean(), (c, useFused) => {
      const base = new Linear(c.inF, c.outF, { bias: c.bias, dtype: "f64", seed: c.seed });
      const x = tensor(normal(size([...c.lead, c.inF]), c.seed + 3), [...c.lead, c.inF], F64);
      const before = values(base.forward(x));
      const layer = patchLinearModule(base, { dim: c.rank, useFused });
      assert.ok(relErr(values(layer.forward(x)), before) < 1e-15);
    }),
    { numRuns: 30 },
  );
});

// Shrunk counterexample of the property above: the fused CPU reference once added the bias before the
// dot product, so near zero (cancellation) its sum differed from the base linear's in the 14th digit.
Deno.test("with B = 0 the fused forward equals the base linear bit for bit (inF 6, outF 1, bias, seed 789711827)", () => {
  for (const useFused of [true, false]) {
    const base = new Linear(6, 1, { bias: true, dtype: "f64", seed: 789711827 });
    const x = tensor(normal(6, 789711827 + 3), [6], F64);
    const before = values(base.forward(x));
    const layer = patchLinearModule(base, { dim: 1, useFused });
    assert.deepStrictEqual(values(layer.forward(x)), before);
  }
});

Deno.test("LinearLoRA / patchLinearModule option errors are ConfigErrors", () => {
  const bad: [LinearLoRAOptions, string][] = [
    [{ dim: 0 }, "dim"],
    [{ dropout: 1 }, "dropout"],
    [{ dropoutPosition: "mid" as "pre" }, "dropoutPosition"],
    [{ loraAInitMethod: "normal" as "xavier" }, "loraAInit"],
    [{ loraDtype: "int8" }, "int8"],
  ];
  for (const [opts, mention] of bad) {
    assert.throws(
      () => new LinearLoRA(new Linear(2, 2), opts),
      (e: Error) => e instanceof ConfigError && e.message.includes(mention),
    );
    assert.throws(
      () => patchLinearModule(new Linear(2, 2), opts),
      (e: Error) => e instanceof ConfigError && e.message.includes(mention),
    );
  }
});

// ---------------------------------------------------------------------------------------------------
// Initialisation of A

Deno.test("xavier init of A is normal with std √(2 / (in + dim)): mean 0, std within 2%, kurtosis 3", () => {
  for (const [inF, dim, seed] of [[1024, 32, 1], [512, 64, 2], [2048, 16, 3]]) {
    const layer = new LinearLoRA(new Linear(inF, 4, { dtype: "f64", materialize: false }), {
      dim,
      seed,
      loraAInitMethod: "xavier",
    });
    const v = layer.lora_A.weight.dataSync();
    const expected = Math.sqrt(2 / (inF + dim));
    const m = moments(v);
    assert.ok(Math.abs(m.mean) < 0.02 * expected, `mean ${m.mean}`);
    assert.ok(Math.abs(m.std / expected - 1) < 0.02, `std ${m.std} vs ${expected}`);
    // Not uniform: a uniform distribution has kurtosis 1.8, a normal one 3.
    assert.ok(Math.abs(m.kurtosis - 3) < 0.15, `kurtosis ${m.kurtosis}`);
    assert.ok(Math.max(...v.map(Math.abs)) > 3 * expected, "normal tails reach past 3σ");
  }
});

Deno.test("xavier is the default init", () => {
  const layer = new LinearLoRA(new Linear(2048, 2, { dtype: "f64", materialize: false }), {
    dim: 16,
    seed: 9,
  });
  const m = moments(layer.lora_A.weight.dataSync());
  assert.ok(Math.abs(m.std / Math.sqrt(2 / (2048 + 16)) - 1) < 0.02);
  assert.ok(Math.abs(m.kurtosis - 3) < 0.15);
});

Deno.test("kaiming-uniform init of A (a = √5, 'uniform' or 'kaiming') is U(±1/√in): bounds, variance bound²/3", () => {
  for (const init of ["uniform", "kaiming"] as const) {
    for (const [inF, dim, seed] of [[1024, 32, 4], [300, 100, 5]]) {
      const layer = new LinearLoRA(new Linear(inF, 4, { dtype: "f64", materialize: false }), {
        dim,
        seed,
        loraAInitMethod: init,
      });
      const v = layer.lora_A.weight.dataSync();
      const bound = 1 / Math.sqrt(inF);
      assert.ok(v.every((x) => Math.abs(x) <= bound), `${init}: a value beyond ±${bound}`);
      assert.ok(Math.max(...v.map(Math.abs)) > 0.999 * bound, `${init}: the range is filled`);
      const m = moments(v);
      assert.ok(Math.abs(m.mean) < 0.02 * bound, `${init}: mean ${m.mean}`);
      assert.ok(Math.abs(m.std ** 2 / (bound ** 2 / 3) - 1) < 0.03, `${init}: variance ${m.std ** 2}`);
      assert.ok(Math.abs(m.kurtosis - 1.8) < 0.05, `${init}: kurtosis ${m.kurtosis}`);
    }
  }
});

Deno.test("A's init is reproducible from a seed and fresh without one", () => {
  const make = (seed?: number) => values(new LinearLoRA(new Linear(16, 4), { dim: 4, seed }).lora_A.weight);
  assert.deepEqual(make(7), make(7));
  assert.notDeepEqual(make(7), make(8));
  assert.notDeepEqual(make(), make());
});

// ---------------------------------------------------------------------------------------------------
// Dropout placement

for (const useFused of [true, false]) {
  for (const position of ["pre", "post"] as const) {
    Deno.test(`dropout "${position}" uses the seeded mask where NeMo AutoModel's LinearLoRA puts it (useFused ${useFused})`, () => {
      fc.assert(
        fc.property(caseArb, fc.double({ min: 0.2, max: 0.8, noNaN: true }), (c, p) => {
          const layer = makeLayer(c, { dropout: p, dropoutPosition: position, useFused });
          layer.dropoutSeed = 123;
          const xShape = [...c.lead, c.inF], m = size(c.lead);
          const xv = normal(size(xShape), c.seed + 4);
          const x = tensor(xv, xShape, F64);
          const preMask = position === "pre" ? dropoutMask(x, p, 123).dataSync() : null;
          const postMask = position === "post"
            ? dropoutMask(zeros([m, c.outF], F64), p, 123).dataSync()
            : null;
          const y = layer.forward(x);
          assert.deepEqual([...y.shape], [...c.lead, c.outF]);
          assert.ok(relErr(values(y), reference(layer, xv, m, preMask, postMask)) < 1e-13);
          // The same seed gives the same output; another seed gives another mask.
          assert.deepEqual(values(layer.forward(x)), values(y));
        }),
        { numRuns: 30 },
      );
    });
  }
}

Deno.test("fused and composed paths drop exactly the same elements (pre: inputs, post: outputs)", () => {
  fc.assert(
    fc.property(caseArb, fc.constantFrom("pre" as const, "post" as const), (c, position) => {
      const run = (useFused: boolean) => {
        const layer = makeLayer(c, { dropout: 0.5, dropoutPosition: position, useFused });
        // A zero base leaves only the LoRA branch, so dropped elements show as exact zeros.
        layer.loadStateDict({
          weight: zeros([c.outF, c.inF], F64),
          ...(c.bias ? { bias: zeros([c.outF], F64) } : {}),
        }, {
          strict: false,
        });
        layer.dropoutSeed = 99;
        const x = tensor(normal(size([...c.lead, c.inF]), c.seed + 5), [...c.lead, c.inF], {
          ...F64,
          requiresGrad: true,
        });
        const y = layer.forward(x);
        sum(y).backward();
        // pre: dx = scale · (dy B A) ⊙ mask is zero exactly where the input was dropped.
        return { y: values(y), dx: values(x.grad!) };
      };
      const fused = run(true), composed = run(false);
      const zerosOf = (v: number[]) => v.map((x) => x === 0);
      if (position === "post") assert.deepEqual(zerosOf(fused.y), zerosOf(composed.y));
      else assert.deepEqual(zerosOf(fused.dx), zerosOf(composed.dx));
      assert.ok(relErr(fused.y, composed.y) < 1e-13);
      assert.ok(relErr(fused.dx, composed.dx) < 1e-13);
    }),
    { numRuns: 40 },
  );
});

Deno.test("pre and post placements give different outputs for the same seed", () => {
  const c: Case = { lead: [4], inF: 6, outF: 5, rank: 2, bias: true, seed: 17 };
  const x = tensor(normal(24, 1), [4, 6], F64);
  const out = (position: "pre" | "post") => {
    const layer = makeLayer(c, { dropout: 0.5, dropoutPosition: position });
    layer.dropoutSeed = 5;
    return values(layer.forward(x));
  };
  assert.ok(relErr(out("pre"), out("post")) > 1e-3);
});

Deno.test("eval mode disables dropout on both paths; training without a seed draws fresh masks", () => {
  fc.assert(
    fc.property(
      caseArb,
      fc.constantFrom("pre" as const, "post" as const),
      fc.boolean(),
      (c, position, useFused) => {
        const layer = makeLayer(c, { dropout: 0.5, dropoutPosition: position, useFused });
        const plain = makeLayer(c, { dropout: 0, useFused });
        const x = tensor(normal(size([...c.lead, c.inF]), c.seed + 6), [...c.lead, c.inF], F64);
        layer.eval();
        assert.ok(relErr(values(layer.forward(x)), values(plain.forward(x))) < 1e-15);
        layer.train();
        // Enough elements that two independent masks almost surely differ somewhere.
        const big = tensor(normal(64 * c.inF, c.seed + 7), [64, c.inF], F64);
        assert.notDeepEqual(values(layer.forward(big)), values(layer.forward(big)));
      },
    ),
    { numRuns: 20 },
  );
});

// ---------------------------------------------------------------------------------------------------
// patchLinearModule

Deno.test("patchLinearModule patches in place: same object, same weights, names unchanged", () => {
  const base = new Linear(5, 3, { seed: 2 });
  const [w, b] = [base.weight, base.bias];
  const keys = Object.keys(base.stateDict());
  const patched = patchLinearModule(base, { dim: 2, alpha: 4 });
  assert.equal(patched, base);
  assert.ok(patched instanceof LinearLoRA);
  assert.equal(patched.weight, w);
  assert.equal(patched.bias, b);
  assert.equal(w.requiresGrad, false);
  assert.deepEqual(Object.keys(patched.stateDict()), [...keys, "lora_A.weight", "lora_B.weight"]);
  assert.equal(patched.scale, 2);
});

Deno.test("patching twice, or patching a non-Linear, is a ConfigError", () => {
  const layer = patchLinearModule(new Linear(3, 3));
  assert.throws(
    () => patchLinearModule(layer),
    (e: Error) => e instanceof ConfigError && /already/.test(e.message),
  );
  assert.throws(() => patchLinearModule(new RMSNorm(3) as unknown as Linear), ConfigError);
});

Deno.test("a shape-only Linear: patch first, load base weights after, then forward equals a built layer", () => {
  fc.assert(
    fc.property(caseArb, fc.boolean(), (c, useFused) => {
      const reference = makeLayer(c, { useFused });
      const lazy = patchLinearModule(
        new Linear(c.inF, c.outF, { bias: c.bias, dtype: "f64", materialize: false }),
        {
          dim: c.rank,
          alpha: 3 * c.rank,
          useFused,
        },
      );
      assert.ok(lazy.weight.isMeta);
      const x = tensor(normal(size([...c.lead, c.inF]), c.seed + 8), [...c.lead, c.inF], F64);
      assert.throws(
        () => lazy.forward(x),
        (e: Error) => e instanceof DeviceError && /not materiali[sz]ed/.test(e.message),
      );
      const w = lazy.weight;
      const { missing } = lazy.loadStateDict(
        { weight: reference.weight, ...(c.bias ? { bias: reference.bias! } : {}) },
        { strict: false },
      );
      assert.deepEqual(missing, ["lora_A.weight", "lora_B.weight"]);
      assert.equal(lazy.weight, w);
      assert.equal(lazy.weight.requiresGrad, false, "the base stays frozen after loading");
      lazy.lora_A.loadStateDict(reference.lora_A.stateDict());
      lazy.lora_B.loadStateDict(reference.lora_B.stateDict());
      assert.deepEqual(values(lazy.forward(x)), values(reference.forward(x)));
    }),
    { numRuns: 20 },
  );
});

// ---------------------------------------------------------------------------------------------------
// Fused versus composed

Deno.test("useFused true and false give the same forward and backward numbers (f64 and f32)", () => {
  fc.assert(
    fc.property(
      caseArb,
      fc.constantFrom("none", "pre", "post"),
      fc.constantFrom("f64" as const, "f32" as const),
      (c, drop, dtype) => {
        const run = (useFused: boolean) => {
          const opts = drop === "none" ? { useFused } : { useFused, dropout: 0.3, dropoutPosition: drop };
          const layer = makeLayer(c, opts, dtype);
          layer.dropoutSeed = 31;
          const x = tensor(normal(size([...c.lead, c.inF]), c.seed + 9), [...c.lead, c.inF], {
            dtype,
            requiresGrad: true,
          });
          const y = layer.forward(x);
          const g = tensor(normal(y.size, c.seed + 10), y.shape, { dtype });
          y.backward(g);
          return [y, x.grad!, layer.lora_A.weight.grad!, layer.lora_B.weight.grad!].map(values);
        };
        const fused = run(true), composed = run(false);
        const tol = dtype === "f64" ? 1e-13 : 1e-5;
        ["y", "dx", "dA", "dB"].forEach((name, i) => {
          const e = relErr(fused[i], composed[i]);
          assert.ok(e < tol, `${name} (${dtype}, dropout ${drop}): relative error ${e}`);
        });
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("loraDtype puts the adapters in another dtype; output keeps the base dtype", () => {
  for (const loraDtype of ["float16", "torch.float64"]) {
    const layer = patchLinearModule(new Linear(4, 3, { seed: 3 }), { dim: 2, loraDtype });
    const want = loraDtype === "float16" ? "f16" : "f64";
    assert.equal(layer.lora_A.weight.dtype, want);
    assert.equal(layer.lora_B.weight.dtype, want);
    assert.equal(layer.weight.dtype, "f32");
    layer.lora_B.loadStateDict({ weight: { shape: [3, 2], data: [1, -1, 0.5, 2, 0, 1] } });
    const x = tensor(normal(8, 4), [2, 4], { requiresGrad: true });
    const y = layer.forward(x);
    assert.equal(y.dtype, "f32");
    const base = new Linear(4, 3, { seed: 3 });
    assert.ok(relErr(values(y), values(base.forward(x))) > 1e-3, "the adapter contributes");
    sum(y).backward();
    assert.equal(layer.lora_A.weight.grad!.dtype, want);
    assert.equal(x.grad!.dtype, "f32");
  }
});

Deno.test("useFused runs the fused function on the CPU; its forward keeps only the token×rank intermediate", () => {
  fc.assert(
    fc.property(caseArb, (c) => {
      const fused = makeLayer(c, { useFused: true }), composed = makeLayer(c, { useFused: false });
      const x = tensor(normal(size([...c.lead, c.inF]), c.seed + 11), [...c.lead, c.inF], {
        ...F64,
        requiresGrad: true,
      });
      const before = cpuDevice().memory();
      const y = fused.forward(x);
      // Two new buffers, the output and t = x·Aᵀ (tokens × rank, f64 on the CPU) for dB: x, A and B are
      // the other things backward reads, nothing else is kept.
      const after = cpuDevice().memory();
      assert.equal(after.buffers, before.buffers + 2);
      assert.equal(after.bytes, before.bytes + 8 * size(c.lead) * (c.outF + c.rank));
      assert.equal(y._node?.op, "loraLinear");
      const saved = new Set(y._node!.inputs);
      for (const t of [x, fused.lora_A.weight, fused.lora_B.weight]) assert.ok(saved.has(t));
      assert.notEqual(composed.forward(x)._node?.op, "loraLinear");
    }),
    { numRuns: 20 },
  );
});

Deno.test("new LinearLoRA and patchLinearModule install the same fields with the same values", () => {
  const opts: LinearLoRAOptions = { dim: 3, alpha: 5, dropout: 0.25, dropoutPosition: "pre", seed: 11 };
  const wrapped = new LinearLoRA(new Linear(6, 4, { seed: 2 }), opts);
  const patched = patchLinearModule(new Linear(6, 4, { seed: 2 }), opts);
  assert.deepEqual(Object.keys(patched).sort(), Object.keys(wrapped).sort());
  const expectedKeys = ["weight", "bias", "lora_A.weight", "lora_B.weight"];
  assert.deepEqual(Object.keys(patched.stateDict()), expectedKeys);
  assert.deepEqual(Object.keys(wrapped.stateDict()), expectedKeys);
  for (const key of Object.keys(wrapped)) {
    const a = (wrapped as Record<string, unknown>)[key], b = (patched as Record<string, unknown>)[key];
    if (a instanceof Linear && b instanceof Linear) {
      assert.deepEqual(b.weight.dataSync(), a.weight.dataSync(), key);
      assert.equal(b.weight.requiresGrad, true, `${key} trains`);
    } else if (!(a instanceof Object)) assert.equal(b, a, key);
  }
  assert.deepEqual([patched.dim, patched.alpha, patched.scale, patched.dropoutP], [3, 5, 5 / 3, 0.25]);
  assert.deepEqual([patched.dropoutPosition, patched.useFused, patched.dropoutSeed, patched.merged], [
    "pre",
    true,
    null,
    false,
  ]);
});
