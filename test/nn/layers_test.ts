/**
 * The basic layers: Linear, Embedding, RMSNorm and Dropout — forward semantics against the functional
 * ops, PyTorch-style initialisation (bounds and variance, checked statistically with fixed seeds),
 * shape-only (meta) weights, and option validation.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  ConfigError,
  DeviceError,
  Dropout,
  dropout,
  Embedding,
  Linear,
  linear,
  randn,
  RMSNorm,
  rmsNorm,
  type Tensor,
  tensor,
} from "../../mod.ts";

const values = (t: Tensor) => [...t.dataSync()];
const dimArb = fc.integer({ min: 1, max: 5 });

function moments(v: ArrayLike<number>): { mean: number; variance: number; kurtosis: number } {
  let m = 0;
  for (let i = 0; i < v.length; i++) m += v[i];
  m /= v.length;
  let m2 = 0, m4 = 0;
  for (let i = 0; i < v.length; i++) {
    const d = (v[i] - m) ** 2;
    m2 += d;
    m4 += d * d;
  }
  return { mean: m, variance: m2 / v.length, kurtosis: m4 / v.length / (m2 / v.length) ** 2 };
}

// ---------------------------------------------------------------------------------------------------
// Linear

Deno.test("Linear.forward is linear(x, weight, bias) on 1-D, 2-D and 3-D inputs", () => {
  fc.assert(
    fc.property(
      fc.array(dimArb, { maxLength: 2 }),
      dimArb,
      dimArb,
      fc.boolean(),
      fc.nat(),
      (lead, i, o, bias, s) => {
        const layer = new Linear(i, o, { bias, seed: s, dtype: "f64" });
        const x = randn([...lead, i], { seed: s + 1, dtype: "f64" });
        const y = layer.forward(x);
        assert.deepEqual([...y.shape], [...lead, o]);
        assert.deepEqual(values(y), values(linear(x, layer.weight, layer.bias)));
        assert.equal(layer.bias === null, !bias);
        assert.equal(layer.inFeatures, i);
        assert.equal(layer.outFeatures, o);
      },
    ),
    { numRuns: 30 },
  );
});

Deno.test("Linear init is PyTorch's: weight and bias in U(±1/√in), variance bound²/3", () => {
  for (const [inF, outF, seed] of [[64, 512, 1], [256, 128, 2], [3, 4096, 3]]) {
    const layer = new Linear(inF, outF, { seed, dtype: "f64" });
    const bound = 1 / Math.sqrt(inF);
    const w = layer.weight.dataSync(), b = layer.bias!.dataSync();
    assert.ok(w.every((v) => Math.abs(v) <= bound) && b.every((v) => Math.abs(v) <= bound));
    const m = moments(w);
    assert.ok(Math.abs(m.mean) < 0.02 * bound, `mean ${m.mean}`);
    assert.ok(
      Math.abs(m.variance / (bound ** 2 / 3) - 1) < 0.03,
      `variance ${m.variance} vs ${bound ** 2 / 3}`,
    );
    // A uniform distribution has kurtosis 1.8 (a normal one 3).
    assert.ok(Math.abs(m.kurtosis - 1.8) < 0.05, `kurtosis ${m.kurtosis}`);
    // The bias fills its range too (outF values).
    assert.ok(Math.max(...b.map(Math.abs)) > 0.9 * bound);
  }
});

Deno.test("Linear parameters require grad, follow dtype, and are reproducible from a seed", () => {
  const a = new Linear(5, 3, { seed: 11 }),
    b = new Linear(5, 3, { seed: 11 }),
    c = new Linear(5, 3, { seed: 12 });
  assert.ok(a.weight.requiresGrad && a.bias!.requiresGrad);
  assert.equal(a.weight.dtype, "f32");
  assert.deepEqual([...a.weight.shape], [3, 5]);
  assert.deepEqual([...a.bias!.shape], [3]);
  assert.deepEqual(values(a.weight), values(b.weight));
  assert.deepEqual(values(a.bias!), values(b.bias!));
  assert.notDeepEqual(values(a.weight), values(c.weight));
  assert.equal(new Linear(2, 2, { dtype: "f64" }).weight.dtype, "f64");
  assert.notDeepEqual(values(new Linear(8, 8).weight), values(new Linear(8, 8).weight));
});

Deno.test("Linear with non-positive or fractional sizes is a ConfigError naming Linear", () => {
  for (const [i, o] of [[0, 2], [2, 0], [1.5, 2], [-1, 3]]) {
    assert.throws(
      () => new Linear(i, o),
      (e: Error) => e instanceof ConfigError && e.message.includes("Linear"),
    );
  }
});

Deno.test("Linear with materialize: false has shape-only weights until loadStateDict fills them", () => {
  const layer = new Linear(3, 2, { materialize: false });
  assert.ok(layer.weight.isMeta && layer.bias!.isMeta);
  assert.deepEqual([...layer.weight.shape], [2, 3]);
  assert.ok(layer.weight.requiresGrad);
  const x = tensor([1, 2, 3], [1, 3]);
  assert.throws(
    () => layer.forward(x),
    (e: Error) => e instanceof DeviceError && /not materiali[sz]ed/.test(e.message),
  );
  const w = layer.weight;
  layer.loadStateDict({
    weight: { shape: [2, 3], data: [1, 0, 0, 0, 1, 0] },
    bias: { shape: [2], data: [10, 20] },
  });
  assert.equal(layer.weight, w, "loading keeps the tensor object");
  assert.equal(layer.weight.isMeta, false);
  assert.ok(layer.weight.requiresGrad);
  assert.deepEqual(values(layer.forward(x)), [11, 22]);
});

// ---------------------------------------------------------------------------------------------------
// Embedding, RMSNorm

Deno.test("Embedding.forward gathers rows; init is N(0, 1)", () => {
  const emb = new Embedding(7, 3, { seed: 5 });
  assert.ok(emb.weight.requiresGrad);
  const w = values(emb.weight);
  const y = emb.forward([[6, 0], [2, 2]]);
  assert.deepEqual([...y.shape], [2, 2, 3]);
  const rows = [6, 0, 2, 2].flatMap((r) => w.slice(r * 3, r * 3 + 3));
  assert.deepEqual(values(y), rows.map(Math.fround));
  const big = new Embedding(1000, 64, { seed: 6, dtype: "f64" });
  const m = moments(big.weight.dataSync());
  assert.ok(
    Math.abs(m.mean) < 0.02 && Math.abs(m.variance - 1) < 0.03 && Math.abs(m.kurtosis - 3) < 0.15,
    JSON.stringify(m),
  );
});

Deno.test("RMSNorm starts with unit weight and eps 1e-6, and forwards rmsNorm", () => {
  fc.assert(
    fc.property(
      fc.array(dimArb, { maxLength: 2 }),
      dimArb,
      fc.constantFrom(undefined, 1e-5, 0.25),
      fc.nat(),
      (
        lead,
        d,
        eps,
        seed,
      ) => {
        const norm = new RMSNorm(d, { eps, dtype: "f64" });
        assert.equal(norm.eps, eps ?? 1e-6);
        assert.ok(values(norm.weight).every((v) => v === 1));
        assert.ok(norm.weight.requiresGrad);
        const x = randn([...lead, d], { seed, dtype: "f64" });
        assert.deepEqual(values(norm.forward(x)), values(rmsNorm(x, norm.weight, norm.eps)));
      },
    ),
    { numRuns: 20 },
  );
});

// ---------------------------------------------------------------------------------------------------
// Dropout

Deno.test("Dropout: seeded mask in training, identity in eval, fresh masks without a seed", () => {
  const x = randn([8, 32], { seed: 1 });
  const d = new Dropout(0.3);
  assert.equal(d.p, 0.3);
  assert.deepEqual(values(d.forward(x, 77)), values(dropout(x, 0.3, { seed: 77 })));
  assert.notDeepEqual(values(d.forward(x)), values(d.forward(x)));
  d.eval();
  assert.deepEqual(values(d.forward(x, 77)), values(x));
  d.train();
  assert.notDeepEqual(values(d.forward(x, 77)), values(x));
  assert.deepEqual(values(new Dropout(0).forward(x)), values(x));
  assert.equal(new Dropout().p, 0.5);
});

Deno.test("Dropout p outside [0, 1) is a ConfigError naming Dropout and the value", () => {
  for (const p of [1, -0.5, 2, NaN]) {
    assert.throws(
      () => new Dropout(p),
      (e: Error) =>
        e instanceof ConfigError && e.message.includes("Dropout") && e.message.includes(String(p)),
    );
  }
});
