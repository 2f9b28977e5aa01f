/**
 * `Module`: PyTorch's naming and registration rules (children and parameters by assignment, arrays
 * by index, dotted paths), stateDict / loadStateDict (strict and not, in place, all-or-nothing),
 * `to(device)` and train/eval propagation.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  ConfigError,
  cpuDevice,
  Dropout,
  Embedding,
  Linear,
  LoraError,
  Module,
  RMSNorm,
  ShapeError,
  type Tensor,
  tensor,
  zeros,
} from "../../mod.ts";

const names = (pairs: [string, unknown][]) => pairs.map(([n]) => n);
const values = (t: Tensor) => [...t.dataSync()];

let nextBlockSeed = 1;

/** A small block shaped like a transformer layer; every instance draws different weights. */
class Block extends Module {
  self_attn = new Module();
  mlp: Linear;
  constructor(seed = (nextBlockSeed += 10)) {
    super();
    this.self_attn.q_proj = new Linear(4, 4, { seed });
    this.self_attn.v_proj = new Linear(4, 4, { bias: false, seed: seed + 2 });
    this.mlp = new Linear(4, 2, { seed: seed + 4 });
  }
}

Deno.test("children and parameters are named like PyTorch: properties, arrays by index", () => {
  const m = new Module();
  m.q_proj = new Linear(8, 8);
  m.layers = [new Linear(8, 8)];
  assert.deepEqual(names(m.namedModules()), ["", "q_proj", "layers.0"]);
  assert.deepEqual(names(m.namedParameters()), [
    "q_proj.weight",
    "q_proj.bias",
    "layers.0.weight",
    "layers.0.bias",
  ]);
  assert.equal(m.parameters().length, 4);
  assert.equal(m.parameters()[0], (m.q_proj as Linear).weight);
});

Deno.test("order is assignment order, whatever the names", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.stringMatching(/^[a-z][a-z_0-9]{0,6}$/), { minLength: 1, maxLength: 6 }),
      (keys) => {
        const m = new Module();
        for (const k of keys) m[k] = new Linear(2, 2, { bias: false });
        assert.deepEqual(names(m.namedModules()).slice(1), keys);
        assert.deepEqual(names(m.namedParameters()), keys.map((k) => `${k}.weight`));
      },
    ),
    { numRuns: 30 },
  );
});

Deno.test("nested modules give full dotted paths", () => {
  const model = new Module();
  model.model = new Module();
  (model.model as Module).layers = [new Block(), new Block()];
  const modNames = names(model.namedModules());
  assert.deepEqual(modNames, [
    "",
    "model",
    "model.layers.0",
    "model.layers.0.self_attn",
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.0.mlp",
    "model.layers.1",
    "model.layers.1.self_attn",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.1.mlp",
  ]);
  assert.deepEqual(Object.keys(model.stateDict()), [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.q_proj.bias",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.mlp.weight",
    "model.layers.0.mlp.bias",
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.1.self_attn.q_proj.bias",
    "model.layers.1.self_attn.v_proj.weight",
    "model.layers.1.mlp.weight",
    "model.layers.1.mlp.bias",
  ]);
});

Deno.test("non-module values are not children: numbers, strings, empty or mixed arrays", () => {
  const m = new Module();
  m.count = 3;
  m.label = "x";
  m.empty = [];
  m.mixed = [new Linear(2, 2), 5];
  m.real = new Linear(2, 2);
  assert.deepEqual(names(m.namedModules()), ["", "real"]);
});

Deno.test("a shared submodule and a tied parameter appear once in namedModules / namedParameters", () => {
  const m = new Module();
  const shared = new Linear(3, 3);
  m.a = shared;
  m.b = shared;
  assert.deepEqual(names(m.namedModules()), ["", "a"]);
  assert.deepEqual(names(m.namedParameters()), ["a.weight", "a.bias"]);
  // Tied weights (an output head reusing the embedding table) keep both names in stateDict, as in PyTorch.
  const lm = new Module();
  lm.embed = new Embedding(5, 3);
  lm.head = new Linear(3, 5, { bias: false });
  (lm.head as Linear).weight = (lm.embed as Embedding).weight;
  assert.deepEqual(names(lm.namedParameters()), ["embed.weight"]);
  assert.deepEqual(Object.keys(lm.stateDict()), ["embed.weight", "head.weight"]);
});

Deno.test("buffers: persistent ones are in stateDict, non-persistent ones are not; neither is a parameter", () => {
  const m = new Module();
  m.lin = new Linear(2, 2);
  m.registerBuffer("running", zeros([2]));
  m.registerBuffer("cache", zeros([4]), false);
  // PyTorch's order: a module's own parameters and buffers, then its children's.
  assert.deepEqual(Object.keys(m.stateDict()), ["running", "lin.weight", "lin.bias"]);
  assert.deepEqual(names(m.namedParameters()), ["lin.weight", "lin.bias"]);
  assert.ok(m.buffer("cache") !== undefined);
});

// ---------------------------------------------------------------------------------------------------
// stateDict / loadStateDict

Deno.test("stateDict values are the module's tensors; loadStateDict copies in place keeping identity and requiresGrad", () => {
  const src = new Block(), dst = new Block();
  for (const p of dst.parameters()) p.requiresGrad = false;
  dst.mlp.weight.requiresGrad = true;
  const before = dst.stateDict();
  const sd = src.stateDict();
  assert.equal(sd["mlp.weight"], src.mlp.weight);
  const result = dst.loadStateDict(sd);
  assert.deepEqual(result, { missing: [], unexpected: [] });
  const after = dst.stateDict();
  for (const k of Object.keys(before)) {
    assert.equal(after[k], before[k], `${k} keeps its identity`);
    assert.deepEqual(values(after[k]), values(sd[k]), `${k} has the loaded values`);
    assert.notEqual(after[k], sd[k]);
  }
  assert.ok(dst.mlp.weight.requiresGrad);
  assert.equal(dst.mlp.bias!.requiresGrad, false);
  // A copy, not a share: changing the source later does not reach the destination.
  src.mlp.weight.dispose();
  assert.equal(values(dst.mlp.weight).length, 8);
});

Deno.test("loadStateDict accepts { shape, data } values and casts to the module's dtype", () => {
  const lin = new Linear(2, 2, { dtype: "f64" });
  lin.loadStateDict({ weight: { shape: [2, 2], data: [1, 2, 3, 4.5] }, bias: tensor([0.1, 0.2], [2]) });
  assert.deepEqual(values(lin.weight), [1, 2, 3, 4.5]);
  assert.equal(lin.bias!.dtype, "f64");
  assert.deepEqual(values(lin.bias!), [Math.fround(0.1), Math.fround(0.2)]);
});

/** Asserts `fn` throws a library error whose message names every string in `mentions`. */
function throwsNaming(fn: () => unknown, mentions: string[]): void {
  assert.throws(fn, (e: Error) => {
    assert.ok(e instanceof LoraError, `expected a library error, got ${e}`);
    for (const s of mentions) assert.ok(e.message.includes(s), `"${e.message}" lacks "${s}"`);
    return true;
  });
}

Deno.test("strict loadStateDict: missing and unexpected keys are errors naming them; nothing changes", () => {
  const m = new Block();
  const snapshot = Object.fromEntries(Object.entries(m.stateDict()).map(([k, t]) => [k, values(t)]));
  const sd: Record<string, Tensor> = { ...new Block().stateDict() };
  delete sd["mlp.bias"];
  throwsNaming(() => m.loadStateDict(sd), ["loadStateDict", "missing", "mlp.bias"]);
  const extra = { ...new Block().stateDict(), "mlp.gate.weight": zeros([2]) };
  throwsNaming(() => m.loadStateDict(extra), ["loadStateDict", "unexpected", "mlp.gate.weight"]);
  const both = { ...sd, stray: zeros([1]) };
  throwsNaming(() => m.loadStateDict(both), ["mlp.bias", "stray"]);
  for (const [k, t] of Object.entries(m.stateDict())) assert.deepEqual(values(t), snapshot[k], k);
});

Deno.test("loadStateDict shape mismatch is a ShapeError naming the key and both shapes; nothing changes", () => {
  for (const strict of [true, false]) {
    const m = new Block();
    const snapshot = Object.fromEntries(Object.entries(m.stateDict()).map(([k, t]) => [k, values(t)]));
    // The bad entry comes last, after entries that would load fine.
    const sd = { ...new Block().stateDict(), "mlp.bias": zeros([3]) };
    assert.throws(
      () => m.loadStateDict(sd, { strict }),
      (e: Error) => e instanceof ShapeError && ["mlp.bias", "[3]", "[2]"].every((s) => e.message.includes(s)),
    );
    const raw = { ...new Block().stateDict(), "mlp.bias": { shape: [2], data: [1, 2, 3] } };
    assert.throws(
      () => m.loadStateDict(raw, { strict }),
      (e: Error) => e instanceof ShapeError && e.message.includes("mlp.bias"),
    );
    for (const [k, t] of Object.entries(m.stateDict())) assert.deepEqual(values(t), snapshot[k], k);
  }
});

Deno.test("loadStateDict with an unusable source tensor changes nothing", () => {
  const m = new Block();
  const snapshot = Object.fromEntries(Object.entries(m.stateDict()).map(([k, t]) => [k, values(t)]));
  const sd = { ...new Block().stateDict() };
  const dead = zeros([2]);
  dead.dispose();
  sd["mlp.bias"] = dead; // the last key: every other entry would load before it
  assert.throws(() => m.loadStateDict(sd), LoraError);
  for (const [k, t] of Object.entries(m.stateDict())) assert.deepEqual(values(t), snapshot[k], k);
});

Deno.test("non-strict loadStateDict loads what matches and reports missing / unexpected keys", () => {
  const m = new Block();
  const src = new Block();
  const sd: Record<string, Tensor> = { "mlp.weight": src.mlp.weight, "other.weight": zeros([1]) };
  const oldBias = values(m.mlp.bias!);
  const r = m.loadStateDict(sd, { strict: false });
  assert.deepEqual(r.unexpected, ["other.weight"]);
  assert.deepEqual(r.missing.sort(), Object.keys(m.stateDict()).filter((k) => k !== "mlp.weight").sort());
  assert.deepEqual(values(m.mlp.weight), values(src.mlp.weight));
  assert.deepEqual(values(m.mlp.bias!), oldBias);
});

Deno.test("stateDict → loadStateDict round-trips every module of random layer stacks", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }), fc.boolean()), {
        minLength: 1,
        maxLength: 4,
      }),
      (dims) => {
        const build = () => {
          const m = new Module();
          m.layers = dims.map(([i, o, b]) => new Linear(i, o, { bias: b }));
          m.norm = new RMSNorm(3);
          return m;
        };
        const a = build(), b = build();
        b.loadStateDict(a.stateDict());
        for (const [k, t] of Object.entries(a.stateDict())) {
          assert.deepEqual(
            values(b.stateDict()[k]),
            values(t),
          );
        }
      },
    ),
    { numRuns: 20 },
  );
});

// ---------------------------------------------------------------------------------------------------
// Devices and modes

Deno.test("to(device) moves in place and returns the same module", async () => {
  const m = new Block();
  const params = m.parameters();
  const vals = params.map(values);
  const r = await m.to(cpuDevice());
  assert.equal(r, m);
  m.parameters().forEach((p, i) => {
    assert.equal(p, params[i]);
    assert.equal(p.device, cpuDevice());
    assert.deepEqual(values(p), vals[i]);
  });
});

Deno.test("train() / eval() propagate to every descendant, arrays included", () => {
  const m = new Module();
  m.layers = [new Block(), new Block()];
  m.drop = new Dropout(0.5);
  const all = () => m.namedModules().map(([, x]) => x.training);
  assert.ok(all().every((t) => t));
  assert.equal(m.eval(), m);
  assert.ok(all().every((t) => !t));
  assert.equal(m.train(), m);
  assert.ok(all().every((t) => t));
  m.train(false);
  assert.ok(all().every((t) => !t));
});

Deno.test("requiresGrad_ on a module sets every parameter; trainableParameters lists the trainable", () => {
  const m = new Block();
  m.requiresGrad_(false);
  assert.equal(m.trainableParameters().length, 0);
  m.mlp.weight.requiresGrad = true;
  assert.deepEqual(m.trainableParameters(), [m.mlp.weight]);
});

Deno.test("forward of a Module that does not define it is a ConfigError naming the class", () => {
  class NoForward extends Module {}
  assert.throws(
    () => new NoForward().forward(),
    (e: unknown) => e instanceof ConfigError && /NoForward\.forward/.test(e.message),
  );
});
