/** Parsing transformers' config.json: both rope spellings, defaults, and a ConfigError per unsupported field. */
import assert from "node:assert/strict";
import { ConfigError, LlamaForCausalLM, parseLlamaConfig } from "../../mod.ts";
import { llamaConfigToJson } from "../../src/models/config.ts";

const BASE = JSON.parse(
  Deno.readTextFileSync(new URL("../fixtures/llama-tiny-lora/base/config.json", import.meta.url)),
);

Deno.test("parseLlamaConfig reads the golden config.json (rope_parameters, GQA, head_dim)", () => {
  const c = parseLlamaConfig(BASE);
  assert.deepEqual(c.architectures, ["LlamaForCausalLM"]);
  assert.equal(c.hiddenSize, 64);
  assert.equal(c.numAttentionHeads, 4);
  assert.equal(c.numKeyValueHeads, 2);
  assert.equal(c.headDim, 16);
  assert.deepEqual(c.rope, { ropeType: "default", theta: 10000 });
  assert.equal(c.tieWordEmbeddings, false);
  assert.equal(c.rmsNormEps, 1e-5);
  assert.equal(c.eosTokenId, 2);
});

Deno.test("parseLlamaConfig: rope_theta (transformers 4.x) and rope_parameters (5.x) mean the same", () => {
  const legacy = { ...BASE, rope_theta: 500000 };
  delete legacy.rope_parameters;
  const modern = { ...BASE, rope_parameters: { rope_type: "default", rope_theta: 500000 } };
  assert.deepEqual(parseLlamaConfig(legacy).rope, parseLlamaConfig(modern).rope);
  const llama3 = {
    rope_type: "llama3",
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  };
  const legacy3 = { ...legacy, rope_scaling: llama3 };
  const modern3 = { ...BASE, rope_parameters: { ...llama3, rope_theta: 500000 } };
  assert.deepEqual(parseLlamaConfig(legacy3).rope, parseLlamaConfig(modern3).rope);
  assert.equal(parseLlamaConfig(modern3).rope.factor, 8);
});

Deno.test("parseLlamaConfig: head_dim defaults to hidden / heads and key/value heads to heads", () => {
  const c = { ...BASE };
  delete c.head_dim;
  delete c.num_key_value_heads;
  const parsed = parseLlamaConfig(c);
  assert.equal(parsed.headDim, 16);
  assert.equal(parsed.numKeyValueHeads, 4);
  assert.equal(parseLlamaConfig({ ...BASE, head_dim: 32 }).headDim, 32);
});

Deno.test("parseLlamaConfig accepts the config as JSON text and rejects invalid JSON with a ConfigError", () => {
  assert.equal(parseLlamaConfig(JSON.stringify(BASE)).vocabSize, 256);
  assert.throws(() => parseLlamaConfig("{not json"), ConfigError);
});

const BAD: [string, Record<string, unknown>, RegExp][] = [
  ["an unsupported architecture", { architectures: ["GPT2LMHeadModel"] }, /architectures.*GPT2LMHeadModel/],
  ["another model_type", { model_type: "qwen2" }, /model_type.*qwen2/],
  ["a gelu activation", { hidden_act: "gelu" }, /hidden_act.*gelu/],
  [
    "an unimplemented rope type",
    { rope_parameters: { rope_type: "yarn", rope_theta: 1e4, factor: 4 } },
    /rope_type.*yarn/,
  ],
  ["rope_scaling of an unimplemented type", {
    rope_parameters: undefined,
    rope_scaling: { rope_type: "dynamic", factor: 2 },
  }, /rope_scaling.*dynamic/],
  [
    "both rope spellings at once",
    { rope_scaling: { rope_type: "linear", factor: 2 } },
    /rope_parameters and rope_scaling/,
  ],
  ["a sliding window", { sliding_window: 4096 }, /sliding_window/],
  [
    "a quantized checkpoint",
    { quantization_config: { quant_method: "bitsandbytes" } },
    /quantization_config/,
  ],
  ["heads not a multiple of key/value heads", { num_key_value_heads: 3 }, /num_key_value_heads/],
  ["an odd head_dim", { head_dim: 15 }, /head_dim/],
  ["a missing hidden_size", { hidden_size: undefined }, /hidden_size/],
  ["a non-boolean attention_bias", { attention_bias: "yes" }, /attention_bias/],
  ["a negative rms_norm_eps", { rms_norm_eps: -1 }, /rms_norm_eps/],
  ["llama3 rope without its factors", {
    rope_parameters: { rope_type: "llama3", rope_theta: 1e4, factor: 8 },
  }, /low_freq_factor/],
  ["attention_dropout of 1", { attention_dropout: 1 }, /attention_dropout/],
];

for (const [what, patch, message] of BAD) {
  Deno.test(`parseLlamaConfig: ${what} is a ConfigError naming the field`, () => {
    const cfg = { ...BASE, ...patch };
    for (const [k, v] of Object.entries(patch)) if (v === undefined) delete cfg[k];
    assert.throws(
      () => parseLlamaConfig(cfg),
      (e: unknown) => e instanceof ConfigError && message.test(e.message),
    );
    // The model constructor parses the same way.
    assert.throws(() => new LlamaForCausalLM(cfg, { materialize: false }), ConfigError);
  });
}

Deno.test("llamaConfigToJson writes every parsed field back in the source's own spelling", () => {
  const parsed = parseLlamaConfig(BASE);
  const json = llamaConfigToJson(parsed, "float32");
  assert.deepEqual(json, BASE, "a transformers 5 config survives unchanged");
  const legacy = { ...BASE, rope_theta: 500000, rope_scaling: null, torch_dtype: "float32" };
  delete legacy.rope_parameters;
  delete legacy.dtype;
  const back = llamaConfigToJson(parseLlamaConfig(legacy), "bfloat16");
  assert.equal(back.rope_theta, 500000);
  assert.equal(back.rope_scaling, null);
  assert.equal(back.torch_dtype, "bfloat16");
  assert.ok(!("rope_parameters" in back) && !("dtype" in back));
  assert.deepEqual(parseLlamaConfig(back).rope, parseLlamaConfig(legacy).rope);
});
