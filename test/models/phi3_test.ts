/**
 * Phi3ForCausalLM beside the shared reference case (family_reference_cases_test.ts): its config fields
 * (what is fixed, what is refused), transformers' module names and state-dict keys with the fused
 * `qkv_proj` / `gate_up_proj`, the fused projections computing exactly the split ones, PEFT's LoRA on
 * the fused Linears, the transformers 4.x config spelling, and saving.
 */
import assert from "node:assert/strict";
import {
  AutoModelForCausalLM,
  ConfigError,
  cpuDevice,
  getPeftModel,
  LlamaForCausalLM,
  LoraConfig,
  parseLlamaConfig,
  Phi3ForCausalLM,
  readSafetensors,
} from "../../mod.ts";
import { relErr } from "../helpers.ts";
import { caseDir, caseInputs } from "./family_cases.ts";
import { withTempDir } from "./tiny_model.ts";

const device = cpuDevice();
const readJson = (path: string) => JSON.parse(Deno.readTextFileSync(path));
const PHI3 = readJson(`${caseDir("phi3-gqa")}base/config.json`);

Deno.test("parse: Phi-3 has fused projections and no biases, whatever attention_bias / mlp_bias say", () => {
  const c = parseLlamaConfig({ ...PHI3, attention_bias: true, mlp_bias: true });
  assert.equal(c.family, "phi3");
  assert.deepEqual(
    [c.fusedProjections, c.attentionBias, c.attentionOutputBias, c.mlpBias, c.qkNorm, c.headDim],
    [true, false, false, false, false, 8],
  );
  const { architectures: _, ...bare } = PHI3;
  assert.deepEqual(parseLlamaConfig(bare).architectures, ["Phi3ForCausalLM"]);
});

const BAD: [string, Record<string, unknown>, RegExp][] = [
  ["a sliding window", { sliding_window: 2047 }, /sliding_window 2047/],
  ["residual dropout", { resid_pdrop: 0.1 }, /resid_pdrop 0.1/],
  ["embedding dropout", { embd_pdrop: 0.1 }, /embd_pdrop 0.1/],
  [
    "partial rotary embeddings inside rope_parameters",
    { rope_parameters: { rope_type: "default", rope_theta: 1e4, partial_rotary_factor: 0.5 } },
    /partial_rotary_factor 0.5/,
  ],
  ["partial rotary embeddings at the top level", { partial_rotary_factor: 0.75 }, /partial_rotary_factor/],
  [
    "LongRoPE scaling (Phi-3 128k)",
    {
      rope_parameters: undefined,
      rope_scaling: { type: "longrope", short_factor: [1], long_factor: [1] },
      rope_theta: 1e4,
    },
    /longrope/,
  ],
  ["a gelu activation", { hidden_act: "gelu_new" }, /hidden_act/],
];
for (const [what, patch, message] of BAD) {
  Deno.test(`parse: ${what} in a Phi-3 config is a ConfigError naming the field`, () => {
    const cfg = { ...PHI3, ...patch };
    for (const k of Object.keys(cfg)) if (cfg[k] === undefined) delete cfg[k];
    assert.throws(
      () => parseLlamaConfig(cfg),
      (e: unknown) => e instanceof ConfigError && message.test(e.message),
    );
    assert.throws(() => AutoModelForCausalLM.fromConfig(cfg), ConfigError);
  });
}

Deno.test("AutoModelForCausalLM builds Phi3ForCausalLM with transformers' fused module names and keys", () => {
  const m = AutoModelForCausalLM.fromConfig(PHI3, { device, seed: 1 });
  assert.ok(m instanceof Phi3ForCausalLM);
  const keys = Object.keys(m.stateDict()).sort();
  const file = readSafetensors(Deno.readFileSync(`${caseDir("phi3-gqa")}base/model.safetensors`));
  assert.deepEqual(keys, [...file.tensors.keys()].sort());
  assert.ok(keys.includes("model.layers.0.self_attn.qkv_proj.weight"));
  assert.ok(keys.includes("model.layers.1.mlp.gate_up_proj.weight"));
  assert.ok(!keys.some((k) => /\.(q|k|v|gate|up)_proj\./.test(k)), "no split projections");
  // (4 + 2·2 heads) · 8 = 64 rows; 2 · 64 intermediate rows.
  assert.deepEqual(m.model.layers[0].self_attn.qkv_proj!.weight.shape, [64, 32]);
  assert.deepEqual(m.model.layers[0].mlp.gate_up_proj!.weight.shape, [128, 32]);
  assert.throws(() => new LlamaForCausalLM(PHI3, { materialize: false }), /Phi3ForCausalLM/);
  assert.throws(
    () => new Phi3ForCausalLM({ ...PHI3, architectures: ["LlamaForCausalLM"], model_type: "llama" }),
    ConfigError,
  );
});

Deno.test("Phi-3's fused projections compute what a Llama with the split q/k/v and gate/up weights computes", async () => {
  const phi = await Phi3ForCausalLM.fromPretrained(`${caseDir("phi3-gqa")}base`, { device });
  const llamaCfg: Record<string, unknown> = {
    ...PHI3,
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
  };
  for (const k of ["resid_pdrop", "embd_pdrop", "original_max_position_embeddings"]) delete llamaCfg[k];
  const llama = new LlamaForCausalLM(llamaCfg, { device, seed: 3 });
  // The split weights: row blocks of the fused ones (q, k, v; gate, up), as Phi-3 orders them.
  const split: Record<string, { data: Float32Array; shape: number[] }> = {};
  for (const [key, w] of Object.entries(phi.stateDict())) {
    const m = /^(.*)\.(qkv_proj|gate_up_proj)\.weight$/.exec(key);
    if (m === null) {
      split[key] = { data: Float32Array.from(w.dataSync()), shape: [...w.shape] };
      continue;
    }
    const names = m[2] === "qkv_proj" ? ["q_proj", "k_proj", "v_proj"] : ["gate_proj", "up_proj"];
    const rows = m[2] === "qkv_proj" ? [32, 16, 16] : [64, 64];
    const cols = w.shape[1], data = Float32Array.from(w.dataSync());
    let at = 0;
    names.forEach((n, i) => {
      split[`${m[1]}.${n}.weight`] = {
        data: data.slice(at * cols, (at + rows[i]) * cols),
        shape: [rows[i], cols],
      };
      at += rows[i];
    });
  }
  llama.loadStateDict(split);
  const { input, attentionMask, golden } = caseInputs("phi3-gqa");
  const a = await phi.forward(input, { attentionMask }).logits.data();
  const b = await llama.forward(input, { attentionMask }).logits.data();
  assert.ok(relErr(a, b) <= 1e-6, `${relErr(a, b)}`);
  assert.ok(relErr(a, golden.get("logits_base")!.data) <= 1e-5);
});

Deno.test("LoRA targets the fused qkv_proj and gate_up_proj by name, as PEFT does, with one A/B over the fused output", () => {
  const m = AutoModelForCausalLM.fromConfig(PHI3, { device, seed: 2 });
  getPeftModel(m, new LoraConfig({ r: 4, targetModules: ["qkv_proj", "gate_up_proj"] }));
  const shapes = Object.fromEntries(
    m.namedParameters().filter(([, p]) => p.requiresGrad).map(([n, p]) => [n, p.shape]),
  );
  assert.deepEqual(shapes["model.layers.0.self_attn.qkv_proj.lora_A.weight"], [4, 32]);
  assert.deepEqual(shapes["model.layers.1.mlp.gate_up_proj.lora_B.weight"], [128, 4]);
  assert.equal(Object.keys(shapes).length, 2 * 2 * 2);
});

Deno.test("Phi-3: the transformers 4.x config spelling gives transformers' logits; saving reloads the same model", async () => {
  const { golden, input, attentionMask } = caseInputs("phi3-gqa");
  const v4 = readJson(`${caseDir("phi3-gqa")}base-v4/config.json`);
  assert.ok("rope_theta" in v4 && !("rope_parameters" in v4));
  const model = await AutoModelForCausalLM.fromPretrained({
    config: JSON.stringify(v4),
    weights: Deno.readFileSync(`${caseDir("phi3-gqa")}base/model.safetensors`),
  }, { device });
  assert.ok(model instanceof Phi3ForCausalLM);
  const before = await model.forward(input, { attentionMask }).logits.data();
  assert.ok(relErr(before, golden.get("logits_base")!.data) <= 1e-5);
  await withTempDir(async (dir) => {
    await model.savePretrained(dir);
    const json = readJson(`${dir}/config.json`);
    assert.ok(!("attention_bias" in json) && !("mlp_bias" in json), "Phi3Config has neither field");
    assert.equal(json.model_type, "phi3");
    const back = await AutoModelForCausalLM.fromPretrained(dir, { device });
    assert.ok(back instanceof Phi3ForCausalLM);
    assert.deepEqual(await back.forward(input, { attentionMask }).logits.data(), before);
  });
});
