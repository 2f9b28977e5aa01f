/**
 * Model families beside Llama: config parsing per family (transformers 4 and 5 spellings, what is not
 * implemented), AutoModelForCausalLM's choice of class, module names and state-dict keys as
 * transformers', saving and reloading, and generate's EOS default from generation_config.json.
 */
import assert from "node:assert/strict";
import {
  AutoModelForCausalLM,
  ConfigError,
  cpuDevice,
  FormatError,
  llamaConfig,
  LlamaForCausalLM,
  MistralForCausalLM,
  parseGenerationConfig,
  parseLlamaConfig,
  Qwen2ForCausalLM,
  Qwen3ForCausalLM,
  readSafetensors,
} from "../../mod.ts";
import { llamaConfigToJson } from "../../src/models/config.ts";
import { relErr } from "../helpers.ts";
import { caseDir, caseInputs } from "./family_cases.ts";
import { withTempDir } from "./tiny_model.ts";

const device = cpuDevice();
const readJson = (path: string) => JSON.parse(Deno.readTextFileSync(path));
const QWEN2 = readJson(`${caseDir("qwen2-tied")}base/config.json`);
const QWEN3 = readJson(`${caseDir("qwen3-gqa")}base/config.json`);

Deno.test("parse: Qwen2 has q/k/v biases and no o/MLP bias whatever attention_bias says; Qwen3 has q/k norms", () => {
  const q2 = parseLlamaConfig({ ...QWEN2, attention_bias: false, mlp_bias: true });
  assert.equal(q2.family, "qwen2");
  assert.deepEqual([q2.attentionBias, q2.attentionOutputBias, q2.mlpBias, q2.qkNorm], [
    true,
    false,
    false,
    false,
  ]);
  const q3 = parseLlamaConfig(QWEN3);
  assert.equal(q3.family, "qwen3");
  assert.deepEqual([q3.attentionBias, q3.attentionOutputBias, q3.qkNorm], [false, false, true]);
  const q3b = parseLlamaConfig({ ...QWEN3, attention_bias: true });
  assert.deepEqual([q3b.attentionBias, q3b.attentionOutputBias], [true, true]);
  const llama = llamaConfig({
    vocabSize: 8,
    hiddenSize: 8,
    intermediateSize: 8,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
  });
  assert.deepEqual([llama.family, llama.qkNorm, llama.attentionOutputBias], ["llama", false, false]);
});

Deno.test("parse: Qwen3's head_dim defaults to 128 (its config class's default), Qwen2's to hidden / heads", () => {
  const { head_dim: _, ...noHeadDim } = QWEN3;
  assert.equal(parseLlamaConfig(noHeadDim).headDim, 128);
  assert.equal(parseLlamaConfig(QWEN2).headDim, 8);
  assert.equal(parseLlamaConfig({ ...QWEN2, head_dim: 16 }).headDim, 16);
});

Deno.test("parse: the family comes from model_type when architectures is absent, and both must agree", () => {
  const { architectures: _, ...bare } = QWEN3;
  const parsed = parseLlamaConfig(bare);
  assert.deepEqual(parsed.architectures, ["Qwen3ForCausalLM"]);
  assert.equal(parsed.family, "qwen3");
  assert.throws(
    () => parseLlamaConfig({ ...QWEN3, model_type: "qwen2" }),
    (e: unknown) => e instanceof ConfigError && /model_type "qwen2" does not match/.test(e.message),
  );
  assert.throws(
    () => parseLlamaConfig({ ...QWEN3, architectures: ["Qwen3ForCausalLM", "LlamaForCausalLM"] }),
    (e: unknown) => e instanceof ConfigError && /different model families/.test(e.message),
  );
});

Deno.test("parse: a transformers 4.x Qwen config (rope_theta, torch_dtype, sliding_window off) equals the 5.x one", () => {
  for (const name of ["qwen2-tied", "qwen3-gqa", "qwen3-bias-tied"]) {
    const v5 = parseLlamaConfig(readJson(`${caseDir(name)}base/config.json`));
    const v4 = parseLlamaConfig(readJson(`${caseDir(name)}base-v4/config.json`));
    assert.equal(v4.source.sliding_window, 4096, "the 4.x file carries a window that is switched off");
    const { source: _a, ...a } = v5;
    const { source: _b, ...b } = v4;
    assert.deepEqual(b, a, name);
  }
});

const BAD: [string, Record<string, unknown>, RegExp][] = [
  ["use_sliding_window true", { use_sliding_window: true }, /use_sliding_window/],
  ["a sliding layer in layer_types", {
    layer_types: ["full_attention", "sliding_attention"],
  }, /layer_types\[1\] "sliding_attention"/],
  ["layer_types of the wrong length", { layer_types: ["full_attention"] }, /layer_types/],
  ["partial rotary embeddings", { partial_rotary_factor: 0.5 }, /partial_rotary_factor/],
  ["a non-boolean use_sliding_window", { use_sliding_window: "no" }, /use_sliding_window/],
  ["a gelu activation", { hidden_act: "gelu" }, /hidden_act/],
  [
    "an unimplemented rope type",
    { rope_parameters: { rope_type: "yarn", rope_theta: 1e6, factor: 4 } },
    /yarn/,
  ],
];
for (const [what, patch, message] of BAD) {
  Deno.test(`parse: ${what} in a Qwen config is a ConfigError naming the field`, () => {
    for (const base of [QWEN2, QWEN3]) {
      assert.throws(
        () => parseLlamaConfig({ ...base, ...patch }),
        (e: unknown) => e instanceof ConfigError && message.test(e.message),
      );
      assert.throws(() => AutoModelForCausalLM.fromConfig({ ...base, ...patch }), ConfigError);
    }
  });
}

Deno.test("AutoModelForCausalLM.fromConfig builds each family's class synchronously, with transformers' names", () => {
  assert.ok(AutoModelForCausalLM.fromConfig(QWEN2, { device, seed: 1 }) instanceof Qwen2ForCausalLM);
  const q3 = AutoModelForCausalLM.fromConfig(JSON.stringify(QWEN3), { device, seed: 1 });
  assert.ok(q3 instanceof Qwen3ForCausalLM);
  const keys = Object.keys(q3.stateDict()).sort();
  const file = readSafetensors(Deno.readFileSync(`${caseDir("qwen3-gqa")}base/model.safetensors`));
  assert.deepEqual(keys, [...file.tensors.keys()].sort());
  assert.ok(keys.includes("model.layers.0.self_attn.q_norm.weight"));
  const q2keys = Object.keys(AutoModelForCausalLM.fromConfig(QWEN2, { device }).stateDict());
  assert.ok(q2keys.includes("model.layers.1.self_attn.v_proj.bias"));
  assert.ok(!q2keys.includes("model.layers.1.self_attn.o_proj.bias"));
  const mistral = {
    ...QWEN2,
    architectures: ["MistralForCausalLM"],
    model_type: "mistral",
    sliding_window: null,
  };
  delete mistral.layer_types;
  assert.ok(AutoModelForCausalLM.fromConfig(mistral, { device }) instanceof MistralForCausalLM);
  const llama = llamaConfig({
    vocabSize: 8,
    hiddenSize: 8,
    intermediateSize: 8,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
  });
  const m = AutoModelForCausalLM.fromConfig(llama, { device });
  assert.equal(m.constructor, LlamaForCausalLM);
});

Deno.test("a family's class refuses another family's config, pointing at AutoModelForCausalLM", async () => {
  const refuse = (e: unknown) =>
    e instanceof ConfigError && /Qwen2ForCausalLM/.test(e.message) && /AutoModelForCausalLM/.test(e.message);
  assert.throws(() => new LlamaForCausalLM(QWEN2, { materialize: false }), refuse);
  await assert.rejects(
    () => LlamaForCausalLM.fromPretrained(`${caseDir("qwen2-tied")}base`, { device }),
    refuse,
  );
  assert.throws(() => new Qwen3ForCausalLM(QWEN2, { materialize: false }), refuse);
});

Deno.test("AutoModelForCausalLM.fromPretrained: a transformers 4.x config with { config, weights } gives transformers' logits", async () => {
  for (const name of ["qwen2-tied", "qwen3-gqa"]) {
    const { golden, input, attentionMask } = caseInputs(name);
    const model = await AutoModelForCausalLM.fromPretrained({
      config: Deno.readTextFileSync(`${caseDir(name)}base-v4/config.json`),
      weights: Deno.readFileSync(`${caseDir(name)}base/model.safetensors`),
    }, { device });
    const err = relErr(
      await model.forward(input, { attentionMask }).logits.data(),
      golden.get("logits_base")!.data,
    );
    assert.ok(err <= 1e-5, `${name}: ${err}`);
    assert.equal(model.generationConfig, null);
    assert.equal(model.defaultEosTokenId, 2, "without generation_config.json, config.json's eos_token_id");
  }
});

Deno.test("saving a Qwen2 model writes the fields Qwen2Config has, its generation_config.json, and reloads to the same logits", async () => {
  const { input, attentionMask } = caseInputs("qwen2-tied");
  const model = await Qwen2ForCausalLM.fromPretrained(`${caseDir("qwen2-tied")}base`, { device });
  const before = await model.forward(input, { attentionMask }).logits.data();
  await withTempDir(async (dir) => {
    await model.savePretrained(dir);
    const json = readJson(`${dir}/config.json`);
    assert.ok(!("attention_bias" in json) && !("mlp_bias" in json), "Qwen2Config has neither field");
    assert.deepEqual(json.layer_types, ["full_attention", "full_attention"]);
    const back = await AutoModelForCausalLM.fromPretrained(dir, { device });
    assert.ok(back instanceof Qwen2ForCausalLM);
    assert.deepEqual(
      readJson(`${dir}/generation_config.json`),
      readJson(`${caseDir("qwen2-tied")}base/generation_config.json`),
    );
    assert.deepEqual(back.defaultEosTokenId, model.defaultEosTokenId);
    assert.deepEqual(await back.forward(input, { attentionMask }).logits.data(), before);
  });
  const q3 = parseLlamaConfig({ ...QWEN3, attention_bias: true });
  assert.equal(llamaConfigToJson(q3, "float32").attention_bias, true);
});

Deno.test("generate: EOS defaults to generation_config.json's ids; an explicit id or null overrides it", async () => {
  const dir = `${caseDir("qwen3-gqa")}base`;
  const model = await AutoModelForCausalLM.fromPretrained(dir, { device });
  const eos = readJson(`${dir}/generation_config.json`).eos_token_id as number[];
  assert.deepEqual(model.defaultEosTokenId, eos);
  assert.equal(model.config.eosTokenId, 2);
  const prompt = [[5, 9, 17, 33]];
  const free = (await model.generate(prompt, { maxNewTokens: 8, eosTokenId: null }))[0].slice(4);
  const stopAt = (ids: number[]) => {
    const i = free.findIndex((t) => ids.includes(t));
    return i < 0 ? free : free.slice(0, i + 1);
  };
  assert.deepEqual((await model.generate(prompt, { maxNewTokens: 8 }))[0].slice(4), stopAt(eos));
  assert.deepEqual(
    (await model.generate(prompt, { maxNewTokens: 8, eosTokenId: free[1] }))[0].slice(4),
    stopAt([free[1]]),
  );
  model.generationConfig = null;
  assert.equal(model.defaultEosTokenId, 2);
});

Deno.test("generation config: object sources carry it; malformed files are FormatErrors naming the field", async () => {
  const name = "qwen2-tied";
  const model = await AutoModelForCausalLM.fromPretrained({
    config: readJson(`${caseDir(name)}base/config.json`),
    weights: Deno.readFileSync(`${caseDir(name)}base/model.safetensors`),
    generationConfig: { eos_token_id: 7 },
  }, { device });
  assert.equal(model.defaultEosTokenId, 7);
  assert.deepEqual(parseGenerationConfig('{"eos_token_id": [3, 4], "pad_token_id": null}', "t").eosTokenId, [
    3,
    4,
  ]);
  assert.equal(parseGenerationConfig({ eos_token_id: null }, "t").eosTokenId, null);
  const bad: [unknown, RegExp][] = [
    ["{nope", /not valid JSON/],
    ["[1]", /JSON object/],
    [{ eos_token_id: -1 }, /eos_token_id/],
    [{ eos_token_id: [1, "2"] }, /eos_token_id/],
    [{ pad_token_id: 1.5 }, /pad_token_id/],
  ];
  for (const [input, message] of bad) {
    assert.throws(
      () => parseGenerationConfig(input as string, "fromPretrained"),
      (e: unknown) => e instanceof FormatError && message.test(e.message) && /fromPretrained/.test(e.message),
    );
  }
  await withTempDir(async (dir) => {
    for (const f of ["config.json", "model.safetensors"]) {
      await Deno.copyFile(`${caseDir(name)}base/${f}`, `${dir}/${f}`);
    }
    await Deno.writeTextFile(`${dir}/generation_config.json`, '{"eos_token_id": "end"}');
    await assert.rejects(
      () => AutoModelForCausalLM.fromPretrained(dir, { device }),
      (e: unknown) =>
        e instanceof FormatError && /Qwen2ForCausalLM.fromPretrained.*eos_token_id/.test(e.message),
    );
  });
});

/** Qwen2.5-0.5B's and Qwen3-0.6B's published config.json fields (transformers 4.x spelling). */
const PUBLISHED: [string, Record<string, unknown>, number][] = [
  ["Qwen2.5-0.5B", {
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
    vocab_size: 151936,
    hidden_size: 896,
    intermediate_size: 4864,
    num_hidden_layers: 24,
    num_attention_heads: 14,
    num_key_value_heads: 2,
    max_position_embeddings: 32768,
    max_window_layers: 21,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    sliding_window: 32768,
    use_sliding_window: false,
    tie_word_embeddings: true,
    torch_dtype: "bfloat16",
    bos_token_id: 151643,
    eos_token_id: 151643,
    hidden_act: "silu",
    attention_dropout: 0.0,
    use_cache: true,
  }, 494_032_768],
  ["Qwen3-0.6B", {
    architectures: ["Qwen3ForCausalLM"],
    model_type: "qwen3",
    vocab_size: 151936,
    hidden_size: 1024,
    intermediate_size: 3072,
    num_hidden_layers: 28,
    num_attention_heads: 16,
    num_key_value_heads: 8,
    head_dim: 128,
    max_position_embeddings: 40960,
    max_window_layers: 28,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    rope_scaling: null,
    sliding_window: null,
    use_sliding_window: false,
    attention_bias: false,
    tie_word_embeddings: true,
    torch_dtype: "bfloat16",
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: "silu",
    attention_dropout: 0.0,
  }, 596_049_920],
];
for (const [name, config, count] of PUBLISHED) {
  Deno.test(`${name}'s config.json builds a model with its published parameter count (${count})`, () => {
    const model = new (name.startsWith("Qwen3") ? Qwen3ForCausalLM : Qwen2ForCausalLM)(config, {
      materialize: false,
      device,
    });
    // A tied head is the embedding table: count each tensor once.
    const unique = new Set(model.parameters());
    const total = [...unique].reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
    assert.equal(total, count);
  });
}

Deno.test("loading errors name the class the user called", async () => {
  const name = "qwen3-gqa";
  const config = readJson(`${caseDir(name)}base/config.json`);
  await assert.rejects(
    () => AutoModelForCausalLM.fromPretrained({ config, weights: new Uint8Array(8) }, { device }),
    (e: unknown) => e instanceof FormatError && /^Qwen3ForCausalLM\.fromPretrained: /.test(e.message),
  );
  await assert.rejects(
    () => Qwen3ForCausalLM.fromPretrained("/nonexistent/qwen3", { device }),
    (e: unknown) => e instanceof Error && /^Qwen3ForCausalLM\.fromPretrained: /.test(e.message),
  );
});
