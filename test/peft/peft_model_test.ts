/**
 * PeftModel's behaviour on the tiny Llama (CPU): patching in place, several resident adapters, switching
 * without touching base weights, PEFT's matching rules, mixed-batch rules, saving in PEFT's layout,
 * merging and unloading. The numbers against PEFT itself are in peft_model_reference_test.ts.
 */
import assert from "node:assert/strict";
import {
  ConfigError,
  cpuDevice,
  getPeftModel,
  isLoraLinear,
  Linear,
  LlamaForCausalLM,
  LoraConfig,
  manualSeed,
  Module,
  PeftModel,
  randn,
  type Tensor,
} from "../../mod.ts";
import { relErr } from "../helpers.ts";
import { ADAPTERS_DIR, BASE_DIR, inputIds, loadedModel, meta } from "./peft_cases.ts";

const cpu = cpuDevice();
const base = () => LlamaForCausalLM.fromPretrained(BASE_DIR, { device: cpu });
const logits = async (pm: PeftModel<LlamaForCausalLM>, adapterNames?: string[]) =>
  await pm.forward(inputIds(), adapterNames ? { adapterNames } : {}).logits.data();
const loraPaths = (m: LlamaForCausalLM) =>
  m.namedModules().filter(([, x]) => isLoraLinear(x)).map(([n]) => n);
const configError = (re: RegExp) => (e: unknown) => e instanceof ConfigError && re.test((e as Error).message);

Deno.test("getPeftModel patches the base in place with PEFT's default targets, base frozen, adapter trainable", async () => {
  const model = await base();
  manualSeed(3);
  const pm = getPeftModel(model, new LoraConfig({ r: 2 }));
  assert.equal(pm.baseModel, model);
  // PEFT's default for llama is q_proj and v_proj
  assert.deepEqual(loraPaths(model), [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
  ]);
  assert.ok(model.namedModules().some(([n]) => n === "model.layers.0.self_attn.q_proj.lora_A"));
  for (const [name, p] of model.namedParameters()) {
    assert.equal(p.requiresGrad, name.includes(".lora_"), name);
  }
  assert.deepEqual(pm.peftConfig.default.targetModules, ["q_proj", "v_proj"]); // recorded as PEFT does
  // PEFT's init: B zero, so the adapter starts as the identity on the outputs
  const before = await logits(pm);
  const off = await pm.withAdapterDisabled(() => logits(pm));
  assert.deepEqual(before, off);
  pm.unload();
});

Deno.test("printTrainableParameters counts every resident adapter as PEFT does", async () => {
  const pm = getPeftModel(await base(), LoraConfig.fromDict(meta.adapters.default));
  pm.addAdapter("b", LoraConfig.fromDict(meta.adapters.b));
  pm.addAdapter("c", LoraConfig.fromDict(meta.adapters.c));
  const want = meta.trainable_parameters_after_adding_b_and_c;
  assert.deepEqual(pm.trainableParameterCounts(), want);
  const pct = (100 * want.trainable / want.all).toFixed(4);
  const line = pm.printTrainableParameters();
  assert.equal(
    line,
    `trainable params: ${want.trainable.toLocaleString("en-US")} || all params: ${
      want.all.toLocaleString("en-US")
    } || trainable%: ${pct}`,
  );
  pm.unload();
});

Deno.test("setAdapter switches adapter fields only: base weight tensors and values stay put", async () => {
  const pm = await loadedModel(cpu);
  const model = pm.baseModel;
  const baseParams = () =>
    model.namedParameters().filter(([n]) => !n.includes(".lora_")).map(([n, t]) => [n, t] as const);
  const before = baseParams();
  const values = await Promise.all(before.map(([, t]) => t.data()));
  for (const name of ["b", "c", "default", "b"]) {
    pm.setAdapter(name);
    assert.equal(pm.activeAdapter, name);
    const now = baseParams();
    assert.deepEqual(now.map(([n]) => n), before.map(([n]) => n));
    now.forEach(([n, t], i) => assert.equal(t, before[i][1], `${n} is the same tensor object`));
  }
  const after = await Promise.all(before.map(([, t]) => t.data()));
  after.forEach((v, i) => assert.deepEqual(v, values[i], before[i][0]));
  // the module tree shows the active adapter's targets only
  pm.setAdapter("c");
  assert.deepEqual(
    new Set(loraPaths(model).map((n) => n.split(".").at(-1))),
    new Set(["v_proj", "gate_proj"]),
  );
  pm.unload();
});

Deno.test("PEFT's matching rules: list entries match exactly or as a suffix, a string is a full-match regex", async () => {
  const model = await base();
  const pm = getPeftModel(
    model,
    new LoraConfig({ targetModules: ["self_attn.o_proj", "model.layers.1.mlp.up_proj"] }),
  );
  assert.deepEqual(loraPaths(model), [
    "model.layers.0.self_attn.o_proj",
    "model.layers.1.self_attn.o_proj",
    "model.layers.1.mlp.up_proj",
  ]);
  // a bare string is a regex over the whole name, so "q_proj" alone matches nothing: an error listing modules
  assert.throws(
    () => pm.addAdapter("x", new LoraConfig({ targetModules: "q_proj" })),
    configError(/matches no module.*model\.embed_tokens/s),
  );
  pm.addAdapter(
    "y",
    new LoraConfig({ targetModules: ".*layers\\.0\\.mlp\\.(gate|up)_proj", excludeModules: ["up_proj"] }),
  );
  pm.setAdapter("y");
  assert.deepEqual(loraPaths(model), ["model.layers.0.mlp.gate_proj"]);
  pm.addAdapter("z", new LoraConfig({ targetModules: "all-linear" }));
  pm.setAdapter("z");
  assert.equal(loraPaths(model).length, 14); // every projection, never lm_head
  assert.equal(pm.peftConfig.z.targetModules!.length, 14); // recorded as the modules it resolved to
  assert.deepEqual(pm.adapterNames, ["default", "y", "z"]); // the failed "x" left nothing behind
  pm.unload();
});

Deno.test("adapterNames: eval mode only, one known name per row, no merged layers", async () => {
  const pm = await loadedModel(cpu);
  pm.train();
  assert.throws(() => pm.forward(inputIds(), { adapterNames: ["b", "b", "b"] }), configError(/eval mode/));
  pm.eval();
  assert.throws(() => pm.forward(inputIds(), { adapterNames: ["b", "b"] }), configError(/2 names.*3 rows/));
  assert.throws(() => pm.forward(inputIds(), { adapterNames: ["b", "nope", "b"] }), configError(/"nope"/));
  // the model still works as before after the refusals (the composed mixed path rounds like the fused one)
  const plain = await logits(pm);
  assert.ok(relErr(await logits(pm, ["default", "default", "default"]), plain) <= 1e-6);
  pm.unload();
});

Deno.test("mixed rows equal each row run alone with its adapter, in forward and in generate", async () => {
  const pm = await loadedModel(cpu);
  const names = ["c", "__base__", "b"];
  const mixed = await logits(pm, names);
  const per = mixed.length / 3;
  for (const [row, name] of names.entries()) {
    const alone = name === "__base__"
      ? await pm.withAdapterDisabled(() => logits(pm))
      : (pm.setAdapter(name), await logits(pm));
    const err = relErr(
      mixed.subarray(row * per, (row + 1) * per),
      alone.subarray(row * per, (row + 1) * per),
    );
    assert.ok(err <= 1e-6, `row ${row} (${name}): ${err}`);
  }
  const prompts = [[5, 6, 7], [5, 6, 7], [5, 6, 7]];
  const together = await pm.generate(prompts, { maxNewTokens: 4, eosTokenId: null, adapterNames: names });
  for (const [row, name] of names.entries()) {
    const alone = name === "__base__"
      ? await pm.withAdapterDisabled(() => pm.generate([prompts[row]], { maxNewTokens: 4, eosTokenId: null }))
      : (pm.setAdapter(name), await pm.generate([prompts[row]], { maxNewTokens: 4, eosTokenId: null }));
    assert.deepEqual(together[row], alone[0], `row ${row} (${name})`);
  }
  assert.notDeepEqual(together[0], together[1]); // the adapters do change the continuation
  pm.unload();
});

Deno.test("training trains the active adapter only; the others keep no gradient", async () => {
  const model = await base();
  const pm = getPeftModel(model, new LoraConfig({ r: 2, targetModules: ["q_proj"], initLoraWeights: false }));
  pm.addAdapter(
    "other",
    new LoraConfig({ r: 2, targetModules: ["q_proj", "v_proj"], initLoraWeights: false }),
  );
  pm.train();
  const { loss } = pm.forward(inputIds(), { labels: inputIds() });
  loss!.backward();
  const other = pm.adapterLayers("other");
  for (const [, a] of other) assert.equal(a.lora_A.weight.grad, null);
  for (const [path, a] of pm.adapterLayers("default")) assert.ok(a.lora_B.weight.grad !== null, path);
  for (const [name, p] of model.namedParameters()) {
    if (!name.includes(".lora_")) assert.equal(p.grad, null, name);
  }
  pm.unload();
});

Deno.test("withAdapterDisabled restores the adapters when its function throws", async () => {
  const pm = await loadedModel(cpu);
  const on = await logits(pm);
  await assert.rejects(pm.withAdapterDisabled(() => {
    throw new Error("inside");
  }));
  assert.deepEqual(await logits(pm), on);
  pm.unload();
});

Deno.test("deleteAdapter frees it and moves the active one on; the last adapter stays (use unload)", async () => {
  const pm = await loadedModel(cpu);
  const bWeights = pm.adapterLayers("b").map(([, a]) => a.lora_A.weight);
  pm.setAdapter("b");
  pm.deleteAdapter("b");
  assert.equal(pm.activeAdapter, "default");
  assert.deepEqual(pm.adapterNames, ["default", "c"]);
  assert.ok(bWeights.every((t) => t.isDisposed));
  assert.throws(() => pm.setAdapter("b"), configError(/no adapter named "b"/));
  pm.deleteAdapter("c");
  assert.throws(() => pm.deleteAdapter("default"), configError(/only adapter/));
  pm.unload();
});

Deno.test("saveAdapter writes PEFT's layout (default at the top, others below) and loads back equal", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pm = await loadedModel(cpu);
    pm.addWeightedAdapter(["default", "b"], [0.7, 0.4], "cat", { combinationType: "cat" });
    const want: Record<string, ArrayLike<number>> = {};
    for (const n of pm.adapterNames) {
      pm.setAdapter(n);
      want[n] = await logits(pm);
    }
    await pm.saveAdapter(`${dir}/out`);
    const entries = [...Deno.readDirSync(`${dir}/out`)].map((e) => e.name).sort();
    assert.deepEqual(entries, ["adapter_config.json", "adapter_model.safetensors", "b", "c", "cat"]);
    pm.unload();
    const again = await PeftModel.fromPretrained(await base(), `${dir}/out`);
    for (const n of ["b", "c", "cat"]) await again.loadAdapter(`${dir}/out/${n}`, n);
    for (const n of again.adapterNames) {
      again.setAdapter(n);
      assert.deepEqual(await logits(again), want[n], n);
    }
    again.unload();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mergeAndUnload folds the active adapter in; unload gives the base back", async () => {
  const pm = await loadedModel(cpu);
  pm.setAdapter("b");
  const withB = await logits(pm);
  const merged = await pm.mergeAndUnload();
  assert.deepEqual(loraPaths(merged), []);
  const out = await merged.forward(inputIds()).logits.data();
  assert.ok(relErr(out, withB) <= 1e-5);
  assert.throws(() => pm.setAdapter("b"), configError(/unloaded/));

  const pm2 = await loadedModel(cpu);
  const off = await pm2.withAdapterDisabled(() => logits(pm2));
  const plain = pm2.unload();
  assert.deepEqual(await plain.forward(inputIds()).logits.data(), off);
  assert.deepEqual(Object.keys(plain.stateDict()).filter((k) => k.includes("lora")), []);
});

Deno.test("loadAdapter: trainable false freezes the adapter and sets eval mode; names are checked", async () => {
  const model = await base();
  model.train();
  const pm = await PeftModel.fromPretrained(model, ADAPTERS_DIR);
  assert.equal(model.training, false);
  assert.ok(pm.adapterLayers("default").every(([, a]) => !a.lora_A.weight.requiresGrad));
  await assert.rejects(pm.loadAdapter(`${ADAPTERS_DIR}/b`, "default"), configError(/exists already/));
  await assert.rejects(pm.loadAdapter(`${ADAPTERS_DIR}/b`, "__base__"), configError(/reserved/));
  await pm.loadAdapter(`${ADAPTERS_DIR}/b`, "b", { trainable: true });
  assert.ok(pm.adapterLayers("b").every(([, a]) => a.lora_A.weight.requiresGrad));
  pm.unload();
});

Deno.test("addWeightedAdapter refuses what PEFT refuses, and more kinds than cat / linear", async () => {
  const pm = await loadedModel(cpu);
  assert.throws(
    () => pm.addWeightedAdapter(["default", "b"], [1, 1], "x", { combinationType: "linear" }),
    configError(/one rank/),
  );
  assert.throws(
    () => pm.addWeightedAdapter(["default", "b"], [1, 1], "x", { combinationType: "svd" as never }),
    configError(/svd/),
  );
  assert.throws(
    () => pm.addWeightedAdapter(["default", "b"], [1], "x", { combinationType: "cat" }),
    configError(/weight/),
  );
  assert.throws(
    () => pm.addWeightedAdapter(["default"], [1], "b", { combinationType: "cat" }),
    configError(/exists/),
  );
  assert.deepEqual(pm.adapterNames, ["default", "b", "c"]);
  pm.unload();
});

Deno.test("mixed rows on a plain Module tree: 3-D input split by its first dim, each row its adapter's output", async () => {
  class Tiny extends Module {
    q_proj = new Linear(8, 6, { seed: 1 });
    override forward(x: Tensor): Tensor {
      return this.q_proj.forward(x);
    }
  }
  const tiny = new Tiny();
  const pm = getPeftModel(tiny, new LoraConfig({ r: 2, targetModules: ["q_proj"], initLoraWeights: false }));
  pm.addAdapter(
    "b",
    new LoraConfig({ r: 3, loraAlpha: 5, targetModules: ["q_proj"], initLoraWeights: false }),
  );
  pm.eval();
  const x = randn([4, 5, 8], { seed: 2 });
  const rows = ["b", "default", "__base__", "b"];
  const mixed = await (pm.forward(x, { adapterNames: rows }) as Tensor).data();
  const each: Record<string, ArrayLike<number>> = {};
  for (const n of ["default", "b"]) {
    pm.setAdapter(n);
    each[n] = await (pm.forward(x) as Tensor).data();
  }
  each.__base__ = await pm.withAdapterDisabled(async () => await (pm.forward(x) as Tensor).data());
  const per = 5 * 6;
  rows.forEach((n, r) => {
    const got = Array.from(mixed).slice(r * per, (r + 1) * per);
    const want = Array.from(each[n]).slice(r * per, (r + 1) * per);
    assert.ok(relErr(got, want) <= 1e-6, `row ${r} (${n})`);
  });
  pm.unload();
});
