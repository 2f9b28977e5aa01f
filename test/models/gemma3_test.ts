/**
 * Gemma3ForCausalLM beside its reference case (gemma3_reference_cases_test.ts): config fields (defaults,
 * what is refused), transformers' module names and state-dict keys, the pieces against their formulas
 * ((1 + w) RMSNorm, the tanh GELU, the √hidden embedding scale), the sliding window being what changes
 * the logits, a KV cache across the window on both attention paths, the transformers 4.x config
 * spelling, saving, PEFT's LoRA targets, and an f16 model.
 */
import assert from "node:assert/strict";
import {
  AutoModelForCausalLM,
  ConfigError,
  cpuDevice,
  Gemma3ForCausalLM,
  getPeftModel,
  KVCache,
  LlamaForCausalLM,
  LoraConfig,
  parseLlamaConfig,
  readSafetensors,
  tensor,
} from "../../mod.ts";
import { geluTanh, Gemma3RMSNorm } from "../../src/models/gemma3.ts";
import { roundToF16 } from "../../src/core/half.ts";
import { relErr } from "../helpers.ts";
import { caseDir, caseInputs } from "./family_cases.ts";
import { GEMMA3_CASE } from "./gemma3_cases.ts";
import { withTempDir } from "./tiny_model.ts";

const device = cpuDevice();
const readJson = (path: string) => JSON.parse(Deno.readTextFileSync(path));
const DIR = caseDir(GEMMA3_CASE);
const GEMMA = readJson(`${DIR}base/config.json`);
const WEIGHTS = Deno.readFileSync(`${DIR}base/model.safetensors`);

Deno.test("parse: a Gemma 3 config's own fields, and Gemma3TextConfig's defaults where they are absent", () => {
  const c = parseLlamaConfig(GEMMA);
  assert.equal(c.family, "gemma3");
  assert.deepEqual(
    [c.hiddenAct, c.qkNorm, c.fusedProjections, c.attentionBias, c.mlpBias, c.tieWordEmbeddings, c.headDim],
    ["gelu_pytorch_tanh", true, false, false, false, true, 12],
  );
  assert.deepEqual(c.gemma3, {
    layerTypes: ["sliding_attention", "full_attention", "sliding_attention"],
    slidingWindow: 5,
    queryPreAttnScalar: 10,
    slidingRope: { ropeType: "default", theta: 10000 },
  });
  assert.deepEqual(c.rope, { ropeType: "linear", theta: 1e6, factor: 4 });
  const { architectures: _, ...bare } = GEMMA;
  assert.deepEqual(parseLlamaConfig(bare).architectures, ["Gemma3ForCausalLM"]);

  // Absent fields: head_dim 256, query_pre_attn_scalar 256, window 4096, tied head, every 6th layer full,
  // rope bases 1e6 (full) and 1e4 (sliding).
  const sparse: Record<string, unknown> = { ...GEMMA, num_hidden_layers: 7 };
  for (const k of ["head_dim", "query_pre_attn_scalar", "sliding_window", "tie_word_embeddings"]) {
    delete sparse[k];
  }
  for (const k of ["layer_types", "rope_parameters", "hidden_activation"]) delete sparse[k];
  const d = parseLlamaConfig(sparse);
  assert.deepEqual([d.headDim, d.tieWordEmbeddings, d.gemma3!.queryPreAttnScalar, d.gemma3!.slidingWindow], [
    256,
    true,
    256,
    4096,
  ]);
  assert.deepEqual(d.gemma3!.layerTypes.map((t) => t[0]).join(""), "sssssfs");
  assert.deepEqual([d.rope, d.gemma3!.slidingRope], [
    { ropeType: "default", theta: 1e6 },
    { ropeType: "default", theta: 1e4 },
  ]);
  // A layer type missing from rope_parameters gets that type's default base.
  const half = parseLlamaConfig({ ...GEMMA, rope_parameters: { full_attention: { rope_type: "default" } } });
  assert.deepEqual([half.rope.theta, half.gemma3!.slidingRope.theta], [1e6, 1e4]);
});

const BAD: [string, Record<string, unknown>, RegExp][] = [
  ["attention soft-capping", { attn_logit_softcapping: 50 }, /attn_logit_softcapping 50/],
  ["final logit soft-capping", { final_logit_softcapping: 30 }, /final_logit_softcapping 30/],
  ["bidirectional attention", { use_bidirectional_attention: true }, /use_bidirectional_attention true/],
  ["another activation", { hidden_activation: "gelu" }, /hidden_activation "gelu"/],
  [
    "a chunked layer type",
    { layer_types: ["sliding_attention", "chunked_attention", "full_attention"] },
    /layer_types\[1\] "chunked_attention"/,
  ],
  ["layer_types of the wrong length", { layer_types: ["full_attention"] }, /layer_types must list/],
  ["no window for a sliding layer", { sliding_window: null }, /sliding_window is null/],
  ["a zero window", { sliding_window: 0 }, /sliding_window must be a positive integer/],
  ["a bad query_pre_attn_scalar", { query_pre_attn_scalar: 0 }, /query_pre_attn_scalar/],
  [
    "rope_parameters not keyed by layer type",
    { rope_parameters: { rope_type: "default", rope_theta: 1e4 } },
    /keyed by layer type/,
  ],
  [
    "an unimplemented rope type on the full layers",
    { rope_parameters: { ...GEMMA.rope_parameters, full_attention: { rope_type: "yarn", factor: 8 } } },
    /rope_type "yarn"/,
  ],
  [
    "a 4.x rope_scaling with `type` only",
    { rope_parameters: undefined, rope_theta: 1e6, rope_scaling: { type: "linear", factor: 8 } },
    /rope_scaling\.type "linear"/,
  ],
  [
    "both rope_parameters and rope_scaling",
    { rope_scaling: { rope_type: "linear", factor: 8 } },
    /both rope_parameters and rope_scaling/,
  ],
  ["partial rotary embeddings", { partial_rotary_factor: 0.5 }, /partial_rotary_factor/],
];
for (const [what, patch, message] of BAD) {
  Deno.test(`parse: ${what} in a Gemma 3 config is a ConfigError naming the field`, () => {
    const cfg = { ...GEMMA, ...patch };
    for (const k of Object.keys(cfg)) if (cfg[k] === undefined) delete cfg[k];
    assert.throws(
      () => parseLlamaConfig(cfg),
      (e: unknown) => e instanceof ConfigError && message.test(e.message),
    );
    assert.throws(() => AutoModelForCausalLM.fromConfig(cfg), ConfigError);
  });
}

Deno.test("AutoModelForCausalLM builds Gemma3ForCausalLM with transformers' module names, keys and initial norms", async () => {
  const m = AutoModelForCausalLM.fromConfig(GEMMA, { device, seed: 1 });
  assert.ok(m instanceof Gemma3ForCausalLM);
  // The state dict names the tied head too; transformers' file leaves it out.
  const keys = Object.keys(m.stateDict()).filter((k) => k !== "lm_head.weight").sort();
  assert.deepEqual(keys, [...readSafetensors(WEIGHTS).tensors.keys()].sort());
  for (const k of ["pre_feedforward_layernorm", "post_feedforward_layernorm", "self_attn.q_norm"]) {
    assert.ok(keys.includes(`model.layers.2.${k}.weight`), k);
  }
  assert.equal(m.lm_head.weight, m.model.embed_tokens.weight, "tied head");
  assert.deepEqual(m.model.layers[0].self_attn.q_proj.weight.shape, [24, 16]); // 2 heads of 12
  assert.deepEqual(m.model.layers[0].self_attn.k_norm.weight.shape, [12]);
  // (1 + w) norms start at w = 0, as transformers initialises them.
  assert.deepEqual(
    Array.from(await m.model.layers[1].post_feedforward_layernorm.weight.data()),
    Array(16).fill(0),
  );
  assert.deepEqual(
    m.model.layers.map((l) => [l.self_attn.layerType, l.self_attn.window]),
    [["sliding_attention", 5], ["full_attention", 0], ["sliding_attention", 5]],
  );
  assert.equal(m.model.layers[0].self_attn.scaling, Math.fround(10 ** -0.5));
  assert.throws(() => new LlamaForCausalLM(GEMMA, { materialize: false }), /Gemma3ForCausalLM/);
  const llama = { ...GEMMA, architectures: ["LlamaForCausalLM"], model_type: "llama" };
  for (const k of ["layer_types", "rope_parameters", "sliding_window"]) delete llama[k];
  assert.throws(() => new Gemma3ForCausalLM(llama), ConfigError);
});

Deno.test("Gemma3RMSNorm is x / rms(x) · (1 + w); in f16 it rounds once, after the scale", async () => {
  const x = [0.5, -1.25, 2, 0.1, -0.3, 3.5, 1, -2];
  const w = [0.1, -0.2, 0.05, 0, 0.3, -0.1, 0.2, 0.01];
  const norm = new Gemma3RMSNorm(4, { eps: 1e-6, device });
  norm.weight = tensor(w.slice(0, 4), [4], { device, requiresGrad: true });
  const want: number[] = [];
  for (let r = 0; r < 2; r++) {
    const row = x.slice(4 * r, 4 * r + 4), inv = 1 / Math.sqrt(row.reduce((a, v) => a + v * v, 0) / 4 + 1e-6);
    row.forEach((v, i) => want.push(v * inv * (1 + w[i])));
  }
  for (const lean of [true, false]) {
    const got = await norm.forward(tensor(x, [2, 4], { device }), lean).data();
    assert.ok(relErr(got, want) < 1e-6, `lean ${lean}: ${relErr(got, want)}`);
  }
  const half = new Gemma3RMSNorm(4, { eps: 1e-6, device, dtype: "f16" });
  half.weight = tensor(w.slice(0, 4), [4], { device, dtype: "f16" });
  const x16 = x.map(roundToF16), w16 = w.slice(0, 4).map(roundToF16);
  const want16: number[] = [];
  for (let r = 0; r < 2; r++) {
    const row = x16.slice(4 * r, 4 * r + 4);
    const inv = 1 / Math.sqrt(row.reduce((a, v) => a + v * v, 0) / 4 + 1e-6);
    row.forEach((v, i) => want16.push(roundToF16(v * inv * (1 + w16[i]))));
  }
  const got16 = await half.forward(tensor(x, [2, 4], { device, dtype: "f16" })).data();
  assert.deepEqual(Array.from(got16), want16);
});

Deno.test("geluTanh is 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), with its gradient, in f32 and f64", async () => {
  const xs = [-8, -3.2, -1, -0.25, 0, 0.3, 1, 2.5, 7];
  const f = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
  for (const dtype of ["f32", "f64"] as const) {
    const x = tensor(xs, [xs.length], { device, dtype, requiresGrad: true });
    const y = geluTanh(x);
    assert.ok(relErr(await y.data(), xs.map(f)) < (dtype === "f32" ? 1e-6 : 1e-14), dtype);
    y.sum().backward();
    const h = 1e-6, slope = xs.map((v) => (f(v + h) - f(v - h)) / (2 * h));
    assert.ok(relErr(await x.grad!.data(), slope) < 1e-6, `${dtype} gradient`);
  }
});

Deno.test("embeddings come out times √hidden rounded to f32 (and to f16 in an f16 model)", async () => {
  const m = await Gemma3ForCausalLM.fromPretrained(`${DIR}base`, { device });
  assert.equal(m.model.embed_tokens.embedScale, Math.fround(4));
  const wide = AutoModelForCausalLM.fromConfig({ ...GEMMA, hidden_size: 18 }, { device, seed: 1 });
  assert.equal((wide as Gemma3ForCausalLM).model.embed_tokens.embedScale, Math.fround(Math.sqrt(18)));
  const half = AutoModelForCausalLM.fromConfig({ ...GEMMA, hidden_size: 18 }, {
    device,
    dtype: "f16",
    seed: 1,
  });
  assert.equal((half as Gemma3ForCausalLM).model.embed_tokens.embedScale, roundToF16(Math.sqrt(18)));
  const row = await m.model.embed_tokens.forward([[5]]).data();
  const table = await m.model.embed_tokens.weight.data();
  assert.deepEqual(Array.from(row), Array.from(table.slice(5 * 16, 6 * 16), (v) => Math.fround(v * 4)));
});

Deno.test("the sliding window is what transformers applies: one position wider, or no sliding layers, changes the logits", async () => {
  const { golden, input, attentionMask } = caseInputs(GEMMA3_CASE);
  const ref = golden.get("logits_base")!.data;
  const logits = async (patch: Record<string, unknown>) => {
    const m = await AutoModelForCausalLM.fromPretrained({
      config: { ...GEMMA, ...patch },
      weights: WEIGHTS,
    }, { device });
    return await m.forward(input, { attentionMask }).logits.data();
  };
  assert.ok(relErr(await logits({}), ref) <= 1e-5);
  assert.ok(relErr(await logits({ sliding_window: 6 }), ref) > 1e-3, "window 6");
  const full = { layer_types: Array(3).fill("full_attention"), rope_parameters: GEMMA.rope_parameters };
  assert.ok(relErr(await logits(full), ref) > 1e-3, "all layers full");
});

Deno.test("a KV cache across the window gives the full forward's logits, fused and eager, with left padding", async () => {
  const m = await Gemma3ForCausalLM.fromPretrained(`${DIR}base`, { device });
  const { input, attentionMask } = caseInputs(GEMMA3_CASE);
  const seq = 12, vocab = 64;
  // Row 0: the case's row 1 (left-padded by 4); row 1: its row 0 (unpadded). Positions 0, 1, ... in both
  // runs (the forward's default).
  const ids = [1, 0].map((r) => input.data.slice(r * seq, r * seq + seq));
  const mask = [1, 0].map((r) => attentionMask.data.slice(r * seq, r * seq + seq));
  for (const impl of ["fused", "eager"] as const) {
    m.attnImplementation = impl;
    const whole = Float32Array.from(await m.forward(ids, { attentionMask: mask }).logits.data());
    const cache = new KVCache(3);
    const prefill = 3;
    const first = m.forward(ids.map((r) => r.slice(0, prefill)), {
      attentionMask: mask.map((r) => r.slice(0, prefill)),
      cache,
    });
    const steps = [Float32Array.from(await first.logits.data())];
    for (let i = prefill; i < seq; i++) {
      const out = m.forward(ids.map((r) => [r[i]]), {
        attentionMask: mask.map((r) => r.slice(0, i + 1)),
        cache,
      });
      steps.push(Float32Array.from(await out.logits.data()));
    }
    cache.dispose();
    // Compare the real positions (a padded query's row is transformers' uniform fallback either way).
    for (let b = 0; b < 2; b++) {
      for (let i = 0; i < seq; i++) {
        if (mask[b][i] === 0) continue;
        const got = i < prefill
          ? steps[0].slice((b * prefill + i) * vocab, (b * prefill + i + 1) * vocab)
          : steps[i - prefill + 1].slice(b * vocab, (b + 1) * vocab);
        const want = whole.slice((b * seq + i) * vocab, (b * seq + i + 1) * vocab);
        assert.ok(relErr(got, want) < 1e-5, `${impl} row ${b} position ${i}: ${relErr(got, want)}`);
      }
    }
  }
});

Deno.test("Gemma 3: the transformers 4.x config spelling gives transformers' logits; saving reloads the same model", async () => {
  const { golden, input, attentionMask } = caseInputs(GEMMA3_CASE);
  const v4 = readJson(`${DIR}base-v4/config.json`);
  assert.ok("rope_local_base_freq" in v4 && !("rope_parameters" in v4) && !("layer_types" in v4));
  const model = await AutoModelForCausalLM.fromPretrained({ config: JSON.stringify(v4), weights: WEIGHTS }, {
    device,
  });
  assert.ok(model instanceof Gemma3ForCausalLM);
  const before = await model.forward(input, { attentionMask }).logits.data();
  assert.ok(relErr(before, golden.get("logits_base")!.data) <= 1e-5);
  await withTempDir(async (dir) => {
    await model.savePretrained(dir);
    const json = readJson(`${dir}/config.json`);
    assert.deepEqual([json.model_type, json.rope_local_base_freq, json.rope_theta], [
      "gemma3_text",
      1e4,
      1e6,
    ]);
    assert.ok(!("hidden_act" in json) && json.hidden_activation === "gelu_pytorch_tanh");
    const back = await AutoModelForCausalLM.fromPretrained(dir, { device });
    assert.ok(back instanceof Gemma3ForCausalLM);
    assert.deepEqual(await back.forward(input, { attentionMask }).logits.data(), before);
  });
  // The transformers 5 spelling saves rope_parameters keyed by layer type again.
  const v5 = await Gemma3ForCausalLM.fromPretrained(`${DIR}base`, { device });
  await withTempDir(async (dir) => {
    await v5.savePretrained(dir);
    const json = readJson(`${dir}/config.json`);
    assert.deepEqual(json.rope_parameters, {
      full_attention: { rope_type: "linear", rope_theta: 1e6, factor: 4 },
      sliding_attention: { rope_type: "default", rope_theta: 1e4 },
    });
    assert.deepEqual([json.layer_types, json.sliding_window, json.query_pre_attn_scalar], [
      GEMMA.layer_types,
      5,
      10,
    ]);
    assert.ok(!("hidden_act" in json));
  });
});

Deno.test("PEFT's LoRA targets Gemma 3's projections by name", () => {
  const m = AutoModelForCausalLM.fromConfig(GEMMA, { device, seed: 2 });
  const targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
  getPeftModel(m, new LoraConfig({ r: 4, targetModules: targets }));
  const shapes = Object.fromEntries(
    m.namedParameters().filter(([, p]) => p.requiresGrad).map(([n, p]) => [n, p.shape]),
  );
  assert.deepEqual(shapes["model.layers.0.self_attn.q_proj.lora_B.weight"], [24, 4]);
  assert.deepEqual(shapes["model.layers.2.mlp.down_proj.lora_A.weight"], [4, 32]);
  assert.equal(Object.keys(shapes).length, 3 * 7 * 2);
  // The same names as PEFT's adapter file of the reference case.
  const file = readSafetensors(Deno.readFileSync(`${DIR}adapter/adapter_model.safetensors`));
  assert.deepEqual(
    Object.keys(shapes).sort(),
    [...file.tensors.keys()].map((k) => k.replace("base_model.model.", "")).sort(),
  );
});

Deno.test("an f16 Gemma 3 stays near the f32 reference logits", async () => {
  const { golden, input, attentionMask } = caseInputs(GEMMA3_CASE);
  const m = await Gemma3ForCausalLM.fromPretrained(`${DIR}base`, { device, dtype: "f16" });
  for (const impl of ["fused", "eager"] as const) {
    m.attnImplementation = impl;
    const err = relErr(
      await m.forward(input, { attentionMask }).logits.data(),
      golden.get("logits_base")!.data,
    );
    assert.ok(err < 1e-2, `${impl}: ${err}`);
  }
});

Deno.test("parse: gemma-3-1b's config.json as published (4.x spelling, window pattern 6, two EOS ids)", () => {
  const c = parseLlamaConfig({
    architectures: ["Gemma3ForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    attn_logit_softcapping: null,
    bos_token_id: 2,
    cache_implementation: "hybrid",
    eos_token_id: [1, 106],
    final_logit_softcapping: null,
    head_dim: 256,
    hidden_activation: "gelu_pytorch_tanh",
    hidden_size: 1152,
    initializer_range: 0.02,
    intermediate_size: 6912,
    max_position_embeddings: 32768,
    model_type: "gemma3_text",
    num_attention_heads: 4,
    num_hidden_layers: 26,
    num_key_value_heads: 1,
    pad_token_id: 0,
    query_pre_attn_scalar: 256,
    rms_norm_eps: 1e-6,
    rope_local_base_freq: 10000,
    rope_scaling: null,
    rope_theta: 1000000,
    sliding_window: 512,
    sliding_window_pattern: 6,
    torch_dtype: "bfloat16",
    transformers_version: "4.50.0.dev0",
    use_cache: true,
    vocab_size: 262144,
  });
  const full = c.gemma3!.layerTypes.flatMap((t, i) => t === "full_attention" ? [i] : []);
  assert.deepEqual(full, [5, 11, 17, 23]);
  assert.deepEqual([
    c.gemma3!.slidingWindow,
    c.rope,
    c.gemma3!.slidingRope,
    c.eosTokenId,
    c.tieWordEmbeddings,
  ], [
    512,
    { ropeType: "default", theta: 1e6 },
    { ropeType: "default", theta: 1e4 },
    [1, 106],
    true,
  ]);
});
