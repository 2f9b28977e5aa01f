/** loadAdapter's refusals: unsupported options, bad values, key and shape mismatches, bad files; all atomic. */
import assert from "node:assert/strict";
import { ConfigError, FormatError, loadAdapter, type Module, ShapeError } from "../../mod.ts";
import { writeSafetensors } from "../../src/io/safetensors.ts";
import { adapterSummary, node, peftFiles, seededValues, tinyLlamaTree } from "./adapter_fixtures.ts";

const Q0 = "model.layers.0.self_attn.q_proj", Q1 = "model.layers.1.self_attn.q_proj";
const BASE = { r: 4, lora_alpha: 8, target_modules: ["q_proj"] };
const Q_RANKS = { [Q0]: 4, [Q1]: 4 };

type ErrorClass = typeof ConfigError | typeof FormatError | typeof ShapeError;

/** requiresGrad of every parameter, to show a failed load changed nothing. */
const gradFlags = (m: Module) => m.namedParameters().map(([n, t]) => `${n}:${t.requiresGrad}`);

/** Expects loading `files` to fail with `cls` and a message containing every `words`, the model untouched. */
async function refuses(
  files: Parameters<typeof loadAdapter>[1],
  cls: ErrorClass,
  words: string[],
  model: Module = tinyLlamaTree(),
) {
  const flags = gradFlags(model);
  const adapters = adapterSummary(model);
  await assert.rejects(loadAdapter(model, files), (e: Error) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.constructor.name}: ${e.message}`);
    for (const w of words) {
      assert.ok(e.message.includes(w), `message lacks ${JSON.stringify(w)}: ${e.message}`);
    }
    return true;
  });
  assert.deepEqual(adapterSummary(model), adapters, "no module was patched");
  assert.deepEqual(gradFlags(model), flags, "no requiresGrad changed");
}

/** Config `BASE` plus `extra`, with correct weights for both q_proj modules. */
const filesWith = (extra: Record<string, unknown>, model: Module = tinyLlamaTree()) =>
  peftFiles(model, { ...BASE, ...extra }, Q_RANKS);

Deno.test("errors: each unsupported PEFT option is a ConfigError naming the field", async () => {
  const unsupported: Record<string, unknown> = {
    use_dora: true,
    lora_bias: true,
    modules_to_save: ["lm_head"],
    fan_in_fan_out: true,
    layers_to_transform: [0],
    layers_pattern: "layers",
    use_qalora: true,
    target_parameters: ["model.layers.0.mlp.experts"],
    alora_invocation_tokens: [1, 2],
    megatron_config: { tensor_model_parallel_size: 2 },
    trainable_token_indices: [3, 4],
    loftq_config: { loftq_bits: 4, loftq_iter: 1 },
    layer_replication: [[0, 2]],
    arrow_config: { top_k: 2 },
    use_bdlora: true,
    kasa_config: { some: 1 },
    a_future_option: 3,
  };
  for (const [field, value] of Object.entries(unsupported)) {
    await refuses(filesWith({ [field]: value }), ConfigError, [field]);
  }
  await refuses(filesWith({ peft_type: "PREFIX_TUNING" }), ConfigError, ["peft_type", "PREFIX_TUNING"]);
  for (const bias of ["all", "lora_only"]) await refuses(filesWith({ bias }), ConfigError, ["bias", bias]);
});

Deno.test("errors: options in their off state and informational fields load fine", async () => {
  const harmless = {
    bias: "none",
    use_dora: false,
    lora_bias: false,
    modules_to_save: null,
    fan_in_fan_out: false,
    layers_to_transform: null,
    layers_pattern: null,
    loftq_config: {},
    trainable_token_indices: null,
    megatron_config: null,
    megatron_core: "megatron.core",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: "someone/tiny-llama",
    revision: "main",
    inference_mode: false,
    init_lora_weights: "gaussian",
    eva_config: { rho: 2 },
    corda_config: { corda_method: "ipm" },
    auto_mapping: { base_model_class: "LlamaForCausalLM" },
    peft_version: "0.21.0",
    qalora_group_size: 16,
    some_new_option_left_off: null,
  };
  const model = tinyLlamaTree();
  assert.deepEqual((await loadAdapter(model, filesWith(harmless, model))).sort(), [Q0, Q1]);
});

Deno.test("errors: bad values of supported fields are ConfigErrors naming the field", async () => {
  const bad: [Record<string, unknown>, string][] = [
    [{ r: 0 }, "r"],
    [{ r: 2.5 }, "r"],
    [{ lora_alpha: "8" }, "lora_alpha"],
    [{ lora_dropout: 1 }, "lora_dropout"],
    [{ use_rslora: "yes" }, "use_rslora"],
    [{ target_modules: null }, "target_modules"],
    [{ target_modules: [] }, "target_modules"],
    [{ target_modules: 5 }, "target_modules"],
    [{ target_modules: "(q_proj" }, "target_modules"],
    [{ exclude_modules: [3] }, "exclude_modules"],
    [{ rank_pattern: { q_proj: 0 } }, "rank_pattern"],
    [{ rank_pattern: ["q_proj"] }, "rank_pattern"],
    [{ alpha_pattern: { q_proj: "x" } }, "alpha_pattern"],
    [{ alpha_pattern: { "[": 2 } }, "alpha_pattern"],
  ];
  for (const [extra, field] of bad) await refuses(filesWith(extra), ConfigError, [field]);
});

Deno.test("errors: a config matching no module is a ConfigError listing the targets and some module names", async () => {
  await refuses(peftFiles(tinyLlamaTree(), { target_modules: ["attention.query"] }, {}), ConfigError, [
    "attention.query",
    "matches no module",
    "model.layers.0",
  ]);
  await refuses(
    peftFiles(tinyLlamaTree(), { target_modules: ["q_proj"], exclude_modules: "model.*" }, {}),
    ConfigError,
    [
      "matches no module",
    ],
  );
});

Deno.test("errors: a module that already has an adapter is a ConfigError (no silent replacement)", async () => {
  const model = tinyLlamaTree();
  await loadAdapter(model, filesWith({}, model));
  await refuses(filesWith({}, model), ConfigError, [Q0, "already has a LoRA adapter"], model);
});

/** PEFT-style weights for q_proj of both layers, edited by `edit` before writing. */
function editedWeights(
  edit: (e: Record<string, { dtype: string; shape: number[]; data: ArrayLike<number> }>) => void,
) {
  const files = filesWith({});
  const e: Record<string, { dtype: string; shape: number[]; data: ArrayLike<number> }> = {};
  for (const name of [Q0, Q1]) {
    e[`base_model.model.${name}.lora_A.weight`] = {
      dtype: "F32",
      shape: [4, 64],
      data: seededValues(256, 1),
    };
    e[`base_model.model.${name}.lora_B.weight`] = {
      dtype: "F32",
      shape: [64, 4],
      data: seededValues(256, 2),
    };
  }
  edit(e);
  return { ...files, "adapter_model.safetensors": writeSafetensors(e) };
}

Deno.test("errors: a missing lora_A or lora_B weight is a FormatError naming the key", async () => {
  for (const which of ["A", "B"]) {
    const key = `base_model.model.${Q1}.lora_${which}.weight`;
    await refuses(editedWeights((e) => delete e[key]), FormatError, ["lacks", key]);
  }
});

Deno.test("errors: weights for a module the config does not target are a FormatError naming the key", async () => {
  const stray = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
  await refuses(
    editedWeights((e) => (e[stray] = { dtype: "F32", shape: [4, 64], data: seededValues(256, 3) })),
    FormatError,
    [stray, "fit no module"],
  );
  const unknown = "base_model.model.model.layers.0.self_attn.q_proj.scaling";
  await refuses(editedWeights((e) => (e[unknown] = { dtype: "F32", shape: [1], data: [1] })), FormatError, [
    unknown,
  ]);
});

Deno.test("errors: non-standard keys get a hint (adapter name left in, DoRA, missing prefix)", async () => {
  const cases: [string, string][] = [
    [`base_model.model.${Q0}.lora_A.default.weight`, "adapter name"],
    [`base_model.model.${Q0}.lora_magnitude_vector`, "DoRA"],
    [`${Q0}.lora_A.weight`, "base_model.model."],
  ];
  for (const [key, hint] of cases) {
    const files = editedWeights((e) => {
      const old = `base_model.model.${Q0}.lora_A.weight`;
      if (!key.includes("magnitude")) delete e[old];
      e[key] = { dtype: "F32", shape: [4, 64], data: seededValues(256, 1) };
    });
    await refuses(files, FormatError, [key, hint]);
  }
});

Deno.test("errors: a weight of the wrong shape is a ShapeError naming the key and the expected shape", async () => {
  const a = `base_model.model.${Q1}.lora_A.weight`, b = `base_model.model.${Q0}.lora_B.weight`;
  await refuses(
    editedWeights((e) => (e[a] = { dtype: "F32", shape: [8, 64], data: seededValues(512, 1) })),
    ShapeError,
    [a, "[8,64]", "[4,64]"],
  );
  await refuses(
    editedWeights((e) => (e[b] = { dtype: "F32", shape: [32, 4], data: seededValues(128, 1) })),
    ShapeError,
    [b, "[64,4]"],
  );
  // A rank that disagrees with rank_pattern: the file has r = 4, the config says 2 for layer 1.
  await refuses(filesWith({ rank_pattern: { "layers.1.self_attn.q_proj": 2 } }), ShapeError, [Q1, "r = 2"]);
});

Deno.test("errors: a non-float weight dtype is a FormatError", async () => {
  const key = `base_model.model.${Q0}.lora_A.weight`;
  await refuses(
    editedWeights((e) => (e[key] = { dtype: "I32", shape: [4, 64], data: new Int32Array(256) })),
    FormatError,
    [key, "I32"],
  );
});

Deno.test("errors: malformed adapter_config.json or safetensors is a FormatError", async () => {
  const good = filesWith({});
  await refuses({ ...good, "adapter_config.json": '{"r": 4, "target_modules": [' }, FormatError, [
    "malformed JSON",
  ]);
  await refuses({ ...good, "adapter_config.json": "[1, 2]" }, FormatError, ["JSON object"]);
  await refuses({ ...good, "adapter_config.json": new Uint8Array([0x7b, 0xff, 0x7d]) }, FormatError, [
    "UTF-8",
  ]);
  await refuses({ ...good, "adapter_model.safetensors": new Uint8Array([1, 2, 3]) }, FormatError, [
    "readSafetensors",
  ]);
});

Deno.test("errors: a files object missing a file, or holding the wrong types, is a FormatError", async () => {
  const good = filesWith({});
  const { "adapter_model.safetensors": _w, ...configOnly } = good;
  await refuses(configOnly as never, FormatError, ["adapter_model.safetensors"]);
  await refuses({ ...good, "adapter_model.safetensors": "bytes" as never }, FormatError, ["Uint8Array"]);
  await refuses({ ...good, "adapter_config.json": 5 as never }, FormatError, ["adapter_config.json"]);
});

Deno.test("errors: a target hitting a non-Linear in a small tree names it; nothing is patched", async () => {
  const model = node({ blocks: [node({ proj: tinyLlamaTree().lm_head })] });
  await refuses(
    peftFiles(model, { target_modules: ["blocks.0"] }, {}),
    ConfigError,
    ["blocks.0", "Module"],
    model,
  );
});
