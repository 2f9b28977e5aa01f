/** Loading and saving checkpoints in transformers' layout: strict keys, dtypes, shards, tied heads. */
import assert from "node:assert/strict";
import {
  applyLoraToLinearModules,
  ConfigError,
  cpuDevice,
  FormatError,
  LlamaForCausalLM,
  mergeAndUnload,
  PeftConfig,
  quantizeModel,
  saveModel,
} from "../../mod.ts";
import { type RawTensorEntry, readSafetensors, writeSafetensors } from "../../src/io/safetensors.ts";
import { tinyModel, tokenRows, withTempDir } from "./tiny_model.ts";
import { fixture } from "../helpers.ts";

const CONFIG = JSON.parse(new TextDecoder().decode(fixture("llama-tiny-lora/base/config.json")));
const WEIGHTS = fixture("llama-tiny-lora/base/model.safetensors");
const TENSORS = readSafetensors(WEIGHTS).tensors;
const IDS = tokenRows(2, 7, 256);

/** The fixture's tensors as raw entries, optionally edited. */
function entries(
  edit: (e: Record<string, RawTensorEntry>) => void = () => {},
): Record<string, RawTensorEntry> {
  const out: Record<string, RawTensorEntry> = {};
  for (const [k, t] of TENSORS) out[k] = { dtype: t.dtype, shape: t.shape, data: t.data as Float32Array };
  edit(out);
  return out;
}

async function logitsOf(model: LlamaForCausalLM): Promise<Float32Array | Float64Array> {
  return await model.forward(IDS).logits.data();
}

async function rejects(weights: Uint8Array | Uint8Array[], pattern: RegExp): Promise<void> {
  await assert.rejects(
    () => LlamaForCausalLM.fromPretrained({ config: CONFIG, weights }),
    (e: unknown) => e instanceof FormatError && pattern.test(e.message),
  );
}

Deno.test("fromPretrained from { config, weights } bytes equals loading the directory", async () => {
  const fromDir = await LlamaForCausalLM.fromPretrained(
    new URL("../fixtures/llama-tiny-lora/base", import.meta.url).pathname,
  );
  const fromBytes = await LlamaForCausalLM.fromPretrained({
    config: JSON.stringify(CONFIG),
    weights: WEIGHTS,
  });
  assert.deepEqual(await logitsOf(fromBytes), await logitsOf(fromDir));
});

Deno.test("module names are transformers' names: the model's keys are exactly the checkpoint's", async () => {
  const model = await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: WEIGHTS });
  assert.deepEqual(Object.keys(model.stateDict()).sort(), [...TENSORS.keys()].sort());
  assert.deepEqual(model.config.architectures, ["LlamaForCausalLM"]);
  assert.equal(model.training, false, "loaded in eval mode, as transformers does");
});

Deno.test("fromPretrained: a missing weight is a FormatError naming its key", async () => {
  await rejects(
    writeSafetensors(entries((e) => delete e["model.layers.1.mlp.up_proj.weight"])),
    /missing keys: model\.layers\.1\.mlp\.up_proj\.weight/,
  );
});

Deno.test("fromPretrained: an unexpected weight is a FormatError naming its key", async () => {
  const extra = entries((
    e,
  ) => (e["model.layers.0.self_attn.q_proj.bias"] = {
    dtype: "F32",
    shape: [64],
    data: new Float32Array(64),
  }));
  await rejects(writeSafetensors(extra), /unexpected key model\.layers\.0\.self_attn\.q_proj\.bias/);
});

Deno.test("fromPretrained: a mis-shaped weight is a FormatError naming key and shapes", async () => {
  const bad = entries((
    e,
  ) => (e["model.norm.weight"] = { dtype: "F32", shape: [32], data: new Float32Array(32) }));
  await rejects(writeSafetensors(bad), /model\.norm\.weight has shape \[32\].*\[64\]/);
});

Deno.test("fromPretrained: integer weights are a FormatError naming key and dtype", async () => {
  const bad = entries((
    e,
  ) => (e["model.norm.weight"] = { dtype: "I32", shape: [64], data: new Int32Array(64) }));
  await rejects(writeSafetensors(bad), /model\.norm\.weight has dtype I32/);
});

Deno.test("fromPretrained: the same key in two shards is a FormatError", async () => {
  const norm = { "model.norm.weight": entries()["model.norm.weight"] };
  await rejects([WEIGHTS, writeSafetensors(norm)], /model\.norm\.weight appears in both/);
});

Deno.test("fromPretrained: shards given as a list load like one file; rotary inv_freq buffers are ignored", async () => {
  const all = entries();
  const keys = Object.keys(all);
  const first = Object.fromEntries(keys.slice(0, 9).map((k) => [k, all[k]]));
  const second = Object.fromEntries(keys.slice(9).map((k) => [k, all[k]]));
  second["model.layers.0.self_attn.rotary_emb.inv_freq"] = {
    dtype: "F32",
    shape: [8],
    data: new Float32Array(8),
  };
  const sharded = await LlamaForCausalLM.fromPretrained({
    config: CONFIG,
    weights: [writeSafetensors(first), writeSafetensors(second)],
  });
  const single = await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: WEIGHTS });
  assert.deepEqual(await logitsOf(sharded), await logitsOf(single));
});

for (const dtype of ["F16", "BF16"]) {
  Deno.test(`fromPretrained converts ${dtype} weights to f32 exactly (equal to the rounded f32 checkpoint)`, async () => {
    const half = writeSafetensors(entries((e) => {
      for (const k of Object.keys(e)) e[k] = { ...e[k], dtype };
    }));
    // The same values, rounded to the half format, stored as F32.
    const rounded: Record<string, RawTensorEntry> = {};
    for (const [k, t] of readSafetensors(half).tensors) {
      rounded[k] = { dtype: "F32", shape: t.shape, data: t.data as Float32Array };
    }
    const a = await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: half });
    const b = await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: writeSafetensors(rounded) });
    assert.deepEqual(await logitsOf(a), await logitsOf(b));
    const full = await logitsOf(await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: WEIGHTS }));
    assert.notDeepEqual(await logitsOf(a), full, "rounding to a half format changes the weights");
  });
}

Deno.test("fromPretrained: a tied model needs no lm_head.weight and shares the embedding tensor", async () => {
  const cfg = { ...CONFIG, tie_word_embeddings: true };
  const model = await LlamaForCausalLM.fromPretrained({
    config: cfg,
    weights: writeSafetensors(entries((e) => delete e["lm_head.weight"])),
  });
  assert.equal(model.lm_head.weight, model.model.embed_tokens.weight);
  const emb = await model.model.embed_tokens.weight.data();
  assert.deepEqual(emb, TENSORS.get("model.embed_tokens.weight")!.data);
  assert.ok(
    !model.namedParameters().some(([n]) => n === "lm_head.weight"),
    "the shared tensor is listed once",
  );
});

Deno.test("fromPretrained: a directory without weights is a FormatError naming what is missing", async () => {
  await withTempDir(async (dir) => {
    Deno.writeTextFileSync(`${dir}/config.json`, JSON.stringify(CONFIG));
    await assert.rejects(
      () => LlamaForCausalLM.fromPretrained(dir),
      /neither model\.safetensors nor model\.safetensors\.index\.json/,
    );
    await assert.rejects(() => LlamaForCausalLM.fromPretrained(`${dir}/nope`), FormatError);
  });
});

Deno.test("savePretrained then fromPretrained reproduces every weight and the logits exactly", async () => {
  const model = tinyModel({ attentionBias: true, mlpBias: true });
  await withTempDir(async (dir) => {
    await model.savePretrained(dir);
    const config = JSON.parse(Deno.readTextFileSync(`${dir}/config.json`));
    assert.equal(config.attention_bias, true);
    assert.equal(config.dtype, "float32");
    assert.deepEqual(config.architectures, ["LlamaForCausalLM"]);
    const back = await LlamaForCausalLM.fromPretrained(dir);
    const sd = model.stateDict(), sd2 = back.stateDict();
    assert.deepEqual(Object.keys(sd2).sort(), Object.keys(sd).sort());
    for (const k of Object.keys(sd)) assert.deepEqual(await sd2[k].data(), await sd[k].data(), k);
    const ids = tokenRows(2, 5);
    assert.deepEqual(await back.forward(ids).logits.data(), await model.forward(ids).logits.data());
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "config.json",
      "model.safetensors",
    ]);
  });
});

Deno.test("saveModel: a quantized model is a ConfigError naming its quantized Linears; nothing is written", async () => {
  const model = tinyModel();
  quantizeModel(model, { scheme: "nf4", blockSize: 16 });
  await withTempDir(async (dir) => {
    const target = `${dir}/ckpt`;
    await assert.rejects(
      () => saveModel(model, target),
      (e) =>
        e instanceof ConfigError &&
        /saveModel: \d+ Linears are quantized \(model\.layers\.0\./.test(e.message),
    );
    assert.throws(() => Deno.statSync(target), Deno.errors.NotFound);
  });
});

Deno.test("saveModel: a tied model is written without lm_head.weight, as transformers does", async () => {
  const model = tinyModel({ tieWordEmbeddings: true });
  await withTempDir(async (dir) => {
    await saveModel(model, dir);
    const keys = [...readSafetensors(Deno.readFileSync(`${dir}/model.safetensors`)).tensors.keys()];
    assert.ok(!keys.includes("lm_head.weight") && keys.includes("model.embed_tokens.weight"));
    const back = await LlamaForCausalLM.fromPretrained(dir);
    assert.equal(back.lm_head.weight, back.model.embed_tokens.weight);
  });
});

Deno.test("saveModel: maxShardBytes splits into numbered shards with an index that loads back", async () => {
  const model = tinyModel();
  await withTempDir(async (dir) => {
    await saveModel(model, dir, { maxShardBytes: 20_000 });
    const index = JSON.parse(Deno.readTextFileSync(`${dir}/model.safetensors.index.json`));
    const files = new Set(Object.values(index.weight_map) as string[]);
    assert.ok(files.size > 2, `several shards, got ${[...files]}`);
    for (const f of files) assert.match(f, /^model-\d{5}-of-\d{5}\.safetensors$/);
    assert.equal(index.weight_map["model.norm.weight"] !== undefined, true);
    const back = await LlamaForCausalLM.fromPretrained(dir);
    const ids = tokenRows(1, 6);
    assert.deepEqual(await back.forward(ids).logits.data(), await model.forward(ids).logits.data());
  });
});

Deno.test("saveModel: dtype BF16 stores rounded values and config says bfloat16", async () => {
  const model = tinyModel();
  await withTempDir(async (dir) => {
    await saveModel(model, dir, { dtype: "BF16" });
    const file = readSafetensors(Deno.readFileSync(`${dir}/model.safetensors`));
    assert.ok([...file.tensors.values()].every((t) => t.dtype === "BF16"));
    assert.equal(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)).dtype, "bfloat16");
    const w = await model.model.norm.weight.data();
    const stored = file.tensors.get("model.norm.weight")!.data as Float32Array;
    assert.ok(stored.every((v, i) => Math.abs(v - w[i]) <= Math.abs(w[i]) * 2 ** -8));
  });
});

Deno.test("saveModel refuses a model that still carries LoRA adapters, and saves it once merged", async () => {
  const model = tinyModel();
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj"], dim: 2 }));
  await withTempDir(async (dir) => {
    await assert.rejects(
      () => saveModel(model, dir),
      (e: unknown) => e instanceof ConfigError && /mergeAndUnload/.test(e.message),
    );
    assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing written");
    await mergeAndUnload(model);
    await saveModel(model, dir);
    const back = await LlamaForCausalLM.fromPretrained(dir, { device: cpuDevice() });
    const ids = tokenRows(1, 4);
    assert.deepEqual(await back.forward(ids).logits.data(), await model.forward(ids).logits.data());
  });
});
