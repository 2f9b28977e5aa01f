/** merge / unmerge on single layers and mergeAndUnload on a whole tree, including PEFT's safe_merge refusal. */
import assert from "node:assert/strict";
import {
  applyLoraToLinearModules,
  ConfigError,
  FormatError,
  isLoraLinear,
  Linear,
  LinearLoRA,
  type LinearLoRAOptions,
  loadAdapter,
  mergeAndUnload,
  modelToFiles,
  patchLinearModule,
  PeftConfig,
  randn,
  type Tensor,
} from "../../mod.ts";
import { unpatchLinearModule } from "../../src/peft/lora_linear.ts";
import { relErr } from "../helpers.ts";
import { tinyModel } from "../models/tiny_model.ts";
import { moduleAt, peftFiles, PROJECTIONS, seededValues, tinyLlamaTree } from "./adapter_fixtures.ts";

/** Overwrites a Linear's weight in place with `values` (default: seeded random values). */
function fill(owner: Linear, seed: number, values?: Float32Array): void {
  const t = owner.weight;
  owner.loadStateDict({ weight: { shape: t.shape, data: values ?? seededValues(t.size, seed) } });
}

type Make = (base: Linear, opts: LinearLoRAOptions) => LinearLoRA;
const MAKERS: [string, Make][] = [
  ["new LinearLoRA", (base, opts) => new LinearLoRA(base, opts)],
  ["patchLinearModule", (base, opts) => patchLinearModule(base, opts)],
];

/** A LoRA layer with random base, A and non-zero B (so merging changes the weight). */
function layer(make: Make, bias: boolean, fused: boolean): LinearLoRA {
  const base = new Linear(12, 10, { bias, seed: 4 });
  const l = make(base, { dim: 3, alpha: 6, useFused: fused, seed: 5 });
  fill(l.lora_B, 6);
  return l;
}

for (const [label, make] of MAKERS) {
  for (const bias of [true, false]) {
    for (const fused of [true, false]) {
      const what = `${label}, bias ${bias}, ${fused ? "fused" : "composed"}`;
      Deno.test(`merge (${what}): merged forward equals unmerged forward; unmerge restores W`, async () => {
        const l = layer(make, bias, fused);
        const x = randn([5, 12], { seed: 7 });
        const before = await l.forward(x).data();
        const w0 = await l.weight.data();
        await l.merge();
        assert.equal(l.merged, true);
        const w1 = await l.weight.data();
        assert.ok(relErr(w1, w0) > 1e-3, "merge changed the weight");
        const merged = await l.forward(x).data();
        assert.ok(relErr(merged, before) <= 1e-6, `merged forward: relative error ${relErr(merged, before)}`);
        await l.merge();
        assert.deepEqual(await l.weight.data(), w1, "a second merge is a no-op");
        await l.unmerge();
        assert.equal(l.merged, false);
        const w2 = await l.weight.data();
        assert.ok(relErr(w2, w0) <= 1e-6, `unmerge: relative error ${relErr(w2, w0)}`);
        const after = await l.forward(x).data();
        assert.ok(
          relErr(after, before) <= 1e-6,
          `forward after unmerge: relative error ${relErr(after, before)}`,
        );
      });
    }
  }
}

Deno.test("merge: a NaN in lora_B or an Inf in lora_A is refused and the base weight is left as it was", async () => {
  for (const which of ["lora_A", "lora_B"] as const) {
    const l = layer(MAKERS[1][1], true, true);
    const t = l[which].weight;
    const bad = seededValues(t.size, 9);
    bad[3] = which === "lora_B" ? NaN : Infinity;
    fill(l[which], 0, bad);
    const w0 = await l.weight.data();
    await assert.rejects(l.merge(), (e: Error) => e instanceof FormatError && e.message.includes(which));
    assert.equal(l.merged, false);
    assert.deepEqual(await l.weight.data(), w0);
  }
});

/** The golden-shaped tree with a random adapter on every projection, and each projection's output on x. */
async function adaptedTree() {
  const model = tinyLlamaTree();
  const ranks = Object.fromEntries(PROJECTIONS.map((n, i) => [n, 2 + (i % 3)]));
  await loadAdapter(
    model,
    peftFiles(model, { r: 2, lora_alpha: 6, target_modules: "all-linear", rank_pattern: ranks }, ranks),
  );
  const outputs = new Map<string, Float32Array | Float64Array>();
  const inputs = new Map<string, Tensor>();
  for (const name of PROJECTIONS) {
    const m = moduleAt(model, name) as LinearLoRA;
    const x = randn([3, m.inFeatures], { seed: name.length });
    inputs.set(name, x);
    outputs.set(name, await m.forward(x).data());
  }
  return { model, outputs, inputs };
}

Deno.test("mergeAndUnload: leaves plain Linears with the base key set and the same outputs", async () => {
  const { model, outputs, inputs } = await adaptedTree();
  const plainKeys = Object.keys(tinyLlamaTree().stateDict()).sort();
  const ownKeys = Object.keys(new Linear(4, 4, { bias: false })).sort();
  assert.equal(await mergeAndUnload(model), model);
  assert.deepEqual(Object.keys(model.stateDict()).sort(), plainKeys);
  for (const name of PROJECTIONS) {
    const m = moduleAt(model, name) as Linear;
    assert.ok(!isLoraLinear(m) && m instanceof Linear && Object.getPrototypeOf(m) === Linear.prototype, name);
    assert.deepEqual(Object.keys(m).sort(), ownKeys, `${name} keeps no adapter fields`);
    const y = await m.forward(inputs.get(name)!).data();
    assert.ok(
      relErr(y, outputs.get(name)!) <= 1e-6,
      `${name}: relative error ${relErr(y, outputs.get(name)!)}`,
    );
  }
});

Deno.test("mergeAndUnload: a layer merged beforehand is unloaded without adding its update twice", async () => {
  const { model, outputs, inputs } = await adaptedTree();
  const name = PROJECTIONS[3];
  await (moduleAt(model, name) as LinearLoRA).merge();
  await mergeAndUnload(model);
  const y = await (moduleAt(model, name) as Linear).forward(inputs.get(name)!).data();
  assert.ok(relErr(y, outputs.get(name)!) <= 1e-6, `relative error ${relErr(y, outputs.get(name)!)}`);
});

Deno.test("mergeAndUnload: a NaN in one lora_B refuses the whole merge, naming the module, changing nothing", async () => {
  const { model } = await adaptedTree();
  const culprit = PROJECTIONS[9];
  const l = moduleAt(model, culprit) as LinearLoRA;
  const bad = seededValues(l.lora_B.weight.size, 2);
  bad[0] = NaN;
  fill(l.lora_B, 0, bad);
  const before = Object.fromEntries(Object.entries(model.stateDict()).map(([k, t]) => [k, t.dataSync()]));
  await assert.rejects(
    mergeAndUnload(model),
    (e: Error) => e instanceof FormatError && e.message.includes(`${culprit}.lora_B`),
  );
  for (const name of PROJECTIONS) {
    assert.ok(isLoraLinear(moduleAt(model, name)), `${name} still has its adapter`);
  }
  for (const [k, t] of Object.entries(model.stateDict())) assert.deepEqual(t.dataSync(), before[k], k);
});

Deno.test("unpatchLinearModule: an unmerged adapter is dropped; the Linear keeps its weight tensor and output", async () => {
  const base = new Linear(12, 10, { seed: 4 });
  const ownKeys = Object.keys(base).sort();
  const weight = base.weight;
  const x = randn([5, 12], { seed: 7 });
  const y0 = await base.forward(x).data();
  const l = patchLinearModule(base, { dim: 3, seed: 5 });
  fill(l.lora_B, 6); // a non-zero update, so dropping it is visible
  const adapterWeights = [l.lora_A.weight, l.lora_B.weight];
  assert.ok(relErr(await l.forward(x).data(), y0) > 1e-3, "the adapter changes the output");
  const plain = unpatchLinearModule(l);
  assert.equal(plain, base);
  assert.ok(!isLoraLinear(plain) && Object.getPrototypeOf(plain) === Linear.prototype);
  assert.deepEqual(Object.keys(plain).sort(), ownKeys, "no adapter field is left");
  assert.equal(plain.weight, weight);
  assert.deepEqual(await plain.forward(x).data(), y0);
  for (const t of adapterWeights) assert.throws(() => t.dataSync(), "adapter weights are freed");
  assert.throws(() => unpatchLinearModule(plain as LinearLoRA), ConfigError);
  const again = patchLinearModule(plain, { dim: 2 });
  assert.deepEqual(again.lora_A.weight.shape, [2, 12], "an unpatched Linear can be patched again");
});

Deno.test("saveModel refuses a Llama that still carries LoRA adapters, naming them; after mergeAndUnload it saves", async () => {
  const model = tinyModel();
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj"], dim: 2 }));
  await assert.rejects(
    modelToFiles(model),
    (e: Error) =>
      e instanceof ConfigError && e.message.includes("LoRA") &&
      e.message.includes("model.layers.0.self_attn.q_proj") && e.message.includes("mergeAndUnload"),
  );
  await mergeAndUnload(model);
  const files = await modelToFiles(model);
  assert.ok(files["model.safetensors"] instanceof Uint8Array);
});
