/** The golden PEFT 0.21 adapter: loads onto a Llama-named tree, saves back identically, merges like PEFT. */
import assert from "node:assert/strict";
import { adapterToFiles, isLoraLinear, loadAdapter, mergeAndUnload } from "../../mod.ts";
import { readSafetensors } from "../../src/io/safetensors.ts";
import type { LinearLoRA } from "../../mod.ts";
import { fixture, loadFixture, relErr } from "../helpers.ts";
import { moduleAt, tinyLlamaTree } from "./adapter_fixtures.ts";
import { parseAdapterConfig, selectorMatches } from "../../src/peft/adapter_config.ts";

const ADAPTER_DIR = new URL("../fixtures/llama-tiny-lora/adapter/", import.meta.url).pathname;
const goldenWeights = readSafetensors(fixture("llama-tiny-lora/adapter/adapter_model.safetensors"));
const goldenConfig = JSON.parse(
  new TextDecoder().decode(fixture("llama-tiny-lora/adapter/adapter_config.json")),
);
const PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj"]
  .concat(["mlp.up_proj", "mlp.down_proj"]);
const ADAPTED = [0, 1].flatMap((i) => PROJ.map((p) => `model.layers.${i}.${p}`));

Deno.test("golden adapter: loads onto the 14 projections with r 8, scale 16/8, PEFT's dropout placement", async () => {
  const model = tinyLlamaTree();
  const names = await loadAdapter(model, ADAPTER_DIR);
  assert.deepEqual([...names].sort(), [...ADAPTED].sort());
  for (const name of ADAPTED) {
    const l = moduleAt(model, name) as LinearLoRA;
    assert.ok(isLoraLinear(l), name);
    assert.equal(l.dim, 8);
    assert.equal(l.alpha, 16);
    assert.equal(l.scale, 2);
    assert.equal(l.dropoutP, 0);
    assert.equal(l.dropoutPosition, "pre");
  }
  for (const name of ["lm_head", "model.embed_tokens", "model.norm"]) {
    assert.ok(!isLoraLinear(moduleAt(model, name)));
  }
});

Deno.test("golden adapter: every LoRA weight equals the file's, bit for bit", async () => {
  const model = tinyLlamaTree();
  await loadAdapter(model, ADAPTER_DIR);
  assert.equal(goldenWeights.tensors.size, 28);
  for (const [key, t] of goldenWeights.tensors) {
    const [, name, which] = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key)!;
    const l = moduleAt(model, name) as LinearLoRA;
    const w = which === "A" ? l.lora_A.weight : l.lora_B.weight;
    assert.deepEqual([...w.shape], t.shape, key);
    assert.deepEqual(w.dataSync(), t.data, key);
  }
});

Deno.test("golden adapter: loading freezes the base and trains only the adapters; trainable:false freezes all", async () => {
  const model = tinyLlamaTree();
  await loadAdapter(model, ADAPTER_DIR);
  const trainable = model.namedParameters().filter(([, t]) => t.requiresGrad).map(([n]) => n);
  const expected = ADAPTED.flatMap((n) => [`${n}.lora_A.weight`, `${n}.lora_B.weight`]);
  assert.deepEqual(trainable.sort(), expected.sort());
  const frozen = tinyLlamaTree();
  await loadAdapter(frozen, ADAPTER_DIR, { trainable: false });
  assert.deepEqual(frozen.parameters().filter((t) => t.requiresGrad), []);
});

Deno.test("golden adapter: saving back gives the same keys, shapes, values and the very same bytes", async () => {
  const model = tinyLlamaTree();
  await loadAdapter(model, ADAPTER_DIR);
  const files = adapterToFiles(model);
  const saved = readSafetensors(files["adapter_model.safetensors"]);
  assert.deepEqual({ ...saved.metadata }, { format: "pt" });
  assert.deepEqual([...saved.tensors.keys()].sort(), [...goldenWeights.tensors.keys()].sort());
  for (const [key, t] of goldenWeights.tensors) {
    const s = saved.tensors.get(key)!;
    assert.equal(s.dtype, t.dtype, key);
    assert.deepEqual(s.shape, t.shape, key);
    assert.deepEqual(s.data, t.data, key);
  }
  // Our writer lays files out as Python's safetensors does, so the whole file matches PEFT's.
  assert.deepEqual(
    files["adapter_model.safetensors"],
    fixture("llama-tiny-lora/adapter/adapter_model.safetensors"),
  );
});

Deno.test("golden adapter: the saved config means what PEFT's does (r, alpha, rsLoRA, modules, scale)", async () => {
  const model = tinyLlamaTree();
  await loadAdapter(model, ADAPTER_DIR);
  const text = adapterToFiles(model, { baseModelNameOrPath: "tiny-llama" })["adapter_config.json"];
  const saved = JSON.parse(text);
  assert.equal(saved.peft_type, "LORA");
  assert.equal(saved.task_type, "CAUSAL_LM");
  assert.equal(saved.r, goldenConfig.r);
  assert.equal(saved.lora_alpha, goldenConfig.lora_alpha);
  assert.equal(saved.use_rslora, false);
  assert.equal(saved.lora_dropout, 0);
  assert.equal(saved.base_model_name_or_path, "tiny-llama");
  assert.deepEqual(saved.rank_pattern, {});
  assert.deepEqual(saved.alpha_pattern, {});
  assert.deepEqual(saved.target_modules, [...ADAPTED].sort());
  // Every field we write is one PEFT 0.21 writes too, with the same value where both are fixed.
  for (const k of Object.keys(saved)) assert.ok(k in goldenConfig, `PEFT does not know ${k}`);
  for (
    const k of ["bias", "fan_in_fan_out", "modules_to_save", "use_dora", "layers_to_transform", "peft_type"]
  ) {
    assert.deepEqual(saved[k], goldenConfig[k], k);
  }
  assert.deepEqual(
    Object.keys(saved),
    Object.keys(saved).sort(),
    "keys sorted like json.dumps(sort_keys=True)",
  );
  // Both configs select the same modules under PEFT's rules.
  const ours = parseAdapterConfig(text), theirs = parseAdapterConfig(goldenConfig);
  for (const [name] of model.namedModules()) {
    assert.equal(
      selectorMatches(ours.targetModules, name),
      selectorMatches(theirs.targetModules, name),
      name,
    );
  }
});

Deno.test("golden adapter: saved files load back onto a fresh tree with identical weights and scales", async () => {
  const first = tinyLlamaTree();
  await loadAdapter(first, ADAPTER_DIR);
  const files = adapterToFiles(first);
  const second = tinyLlamaTree(7);
  const names = await loadAdapter(second, files);
  assert.deepEqual(names, ADAPTED);
  for (const name of ADAPTED) {
    const a = moduleAt(first, name) as LinearLoRA, b = moduleAt(second, name) as LinearLoRA;
    assert.equal(b.scale, a.scale);
    assert.deepEqual(b.lora_A.weight.dataSync(), a.lora_A.weight.dataSync());
    assert.deepEqual(b.lora_B.weight.dataSync(), a.lora_B.weight.dataSync());
  }
});

/** W + scale · B A in float64, the reference a merge must reproduce. */
function mergedReference(
  W: ArrayLike<number>,
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  out: number,
  inF: number,
  r: number,
  scale: number,
) {
  const ref = new Float64Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += B[o * r + k] * A[k * inF + i];
      ref[o * inF + i] = W[o * inF + i] + scale * acc;
    }
  }
  return ref;
}

// golden.safetensors' merged.* weights come from the adapter after its five AdamW steps, which needs the
// Llama model to reproduce; here the untrained file adapter is merged and checked against float64.
Deno.test("golden adapter: mergeAndUnload on the real base weights gives W + 2·BA and the base key set", async () => {
  const model = tinyLlamaTree();
  const base = loadFixture("llama-tiny-lora/base/model.safetensors");
  model.loadStateDict(Object.fromEntries(base));
  const baseKeys = Object.keys(model.stateDict()).sort();
  await loadAdapter(model, ADAPTER_DIR);
  await mergeAndUnload(model);
  assert.deepEqual(Object.keys(model.stateDict()).sort(), baseKeys);
  for (const name of ADAPTED) {
    const W = base.get(`${name}.weight`)!;
    const A = goldenWeights.tensors.get(`base_model.model.${name}.lora_A.weight`)!;
    const B = goldenWeights.tensors.get(`base_model.model.${name}.lora_B.weight`)!;
    const ref = mergedReference(
      W.data,
      A.data as Float32Array,
      B.data as Float32Array,
      W.shape[0],
      W.shape[1],
      8,
      2,
    );
    const ours = model.stateDict()[`${name}.weight`].dataSync();
    const err = relErr(ours, ref);
    assert.ok(err <= 1e-6, `${name}: relative error ${err}`);
    assert.ok(relErr(ours, W.data) > 1e-2, `${name} did not change, so the check above proves nothing`);
  }
});
