/** Saving adapters: per-module ranks/alphas/scales as PEFT patterns, rsLoRA, dtypes, devices. */
import assert from "node:assert/strict";
import {
  adapterToFiles,
  adapterToFilesAsync,
  ConfigError,
  Device,
  DeviceError,
  Linear,
  type LinearLoRA,
  loadAdapter,
  type Module,
  patchLinearModule,
} from "../../mod.ts";
import { createCpuBackend } from "../../src/backend/cpu/cpu_backend.ts";
import { readSafetensors } from "../../src/io/safetensors.ts";
import { exactPattern, parseAdapterConfig, patternValue } from "../../src/peft/adapter_config.ts";
import {
  adapterSummary,
  moduleAt,
  node,
  PROJECTIONS,
  seededValues,
  tinyLlamaTree,
} from "./adapter_fixtures.ts";

/** Patches `name` of `model` with rank r, alpha, optional explicit scale, and random non-zero B. */
function patch(model: Module, name: string, r: number, alpha: number, scale?: number): LinearLoRA {
  const l = patchLinearModule(moduleAt(model, name) as Linear, {
    dim: r,
    alpha,
    scale,
    seed: r * 7 + name.length,
  });
  l.lora_B.loadStateDict({
    weight: { shape: l.lora_B.weight.shape, data: seededValues(l.lora_B.weight.size, r) },
  });
  return l;
}

/** Saves `model`'s adapter, loads it onto `fresh`, and checks ranks, scales and weights survive. */
async function roundTrip(model: Module, fresh: Module): Promise<Record<string, unknown>> {
  const files = adapterToFiles(model);
  await loadAdapter(fresh, files);
  const want = adapterSummary(model), got = adapterSummary(fresh);
  assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort());
  for (const [name, { r, scale }] of Object.entries(want)) {
    assert.equal(got[name].r, r, name);
    assert.ok(
      Math.abs(got[name].scale - scale) <= 1e-12 * Math.abs(scale),
      `${name}: ${got[name].scale} vs ${scale}`,
    );
    const a = moduleAt(model, name) as LinearLoRA, b = moduleAt(fresh, name) as LinearLoRA;
    assert.deepEqual(b.lora_A.weight.dataSync(), a.lora_A.weight.dataSync(), name);
    assert.deepEqual(b.lora_B.weight.dataSync(), a.lora_B.weight.dataSync(), name);
  }
  return JSON.parse(files["adapter_config.json"]);
}

Deno.test("save: per-module ranks and alphas become rank_pattern / alpha_pattern keyed by exact names", async () => {
  const model = tinyLlamaTree();
  for (const name of PROJECTIONS) {
    const r = name.endsWith("q_proj") ? 16 : name === "model.layers.1.mlp.down_proj" ? 2 : 4;
    const alpha = name.endsWith("v_proj") ? 32 : 8;
    patch(model, name, r, alpha);
  }
  patch(model, "lm_head", 4, 8);
  const cfg = await roundTrip(model, tinyLlamaTree(5));
  assert.equal(cfg.r, 4, "most common rank");
  assert.equal(cfg.lora_alpha, 8, "most common alpha");
  assert.deepEqual(cfg.target_modules, [...PROJECTIONS, "lm_head"].sort());
  assert.deepEqual(cfg.rank_pattern, {
    "model.layers.0.self_attn.q_proj": 16,
    "model.layers.1.mlp.down_proj": 2,
    "model.layers.1.self_attn.q_proj": 16,
  });
  assert.deepEqual(cfg.alpha_pattern, {
    "model.layers.0.self_attn.v_proj": 32,
    "model.layers.1.self_attn.v_proj": 32,
  });
  assert.equal(cfg.use_rslora, false);
});

Deno.test("save: adapters scaled alpha / sqrt(r) are written as use_rslora with their alphas", async () => {
  const model = tinyLlamaTree();
  for (const [i, name] of PROJECTIONS.entries()) {
    const r = i % 2 ? 4 : 16;
    patch(model, name, r, 8, 8 / Math.sqrt(r));
  }
  const cfg = await roundTrip(model, tinyLlamaTree(2));
  assert.equal(cfg.use_rslora, true);
  assert.equal(cfg.lora_alpha, 8);
  assert.deepEqual(cfg.alpha_pattern, {});
});

Deno.test("save: a custom scale fitting neither rule is written as the alpha that yields it", async () => {
  const model = tinyLlamaTree();
  patch(model, "model.layers.0.self_attn.q_proj", 4, 8);
  patch(model, "model.layers.1.self_attn.q_proj", 4, 8, 0.3);
  const cfg = await roundTrip(model, tinyLlamaTree(2));
  assert.equal(cfg.use_rslora, false);
  assert.deepEqual(cfg.alpha_pattern, { "model.layers.1.self_attn.q_proj": 0.3 * 4 });
});

Deno.test("save: names that are suffixes of other names, or differ only where a regex dot matches, resolve exactly", async () => {
  const lin = () => new Linear(6, 5, { bias: false, seed: 3 });
  const build = () =>
    node({
      blocks: [node({ proj: lin() })],
      extra: node({ blocks: [node({ proj: lin() })] }),
      a: node({ b: lin() }),
      a_b: lin(),
    });
  const model = build();
  patch(model, "blocks.0.proj", 2, 4);
  patch(model, "extra.blocks.0.proj", 3, 6);
  patch(model, "a.b", 5, 1);
  patch(model, "a_b", 2, 4);
  const cfg = await roundTrip(model, build());
  assert.equal(cfg.task_type, null, "not a causal LM");
});

Deno.test("exactPattern: resolves every module PEFT's way, even where plain keys would collide", () => {
  const cases: [Map<string, number>, number][] = [
    [new Map([["x.q", 4], ["y.x.q", 8], ["q", 4]]), 4],
    [new Map([["x.q", 8], ["y.x.q", 4]]), 4],
    [new Map([["a.b", 2], ["a_b", 3], ["c", 2]]), 2],
    [new Map([["a_b", 2], ["a.b", 3]]), 2],
  ];
  for (const [values, fallback] of cases) {
    const pattern = exactPattern(values, fallback);
    const table = parseAdapterConfig({ target_modules: ["q"], rank_pattern: pattern }).rankPattern;
    for (const [name, v] of values) {
      assert.equal(patternValue(table, name, fallback), v, `${name} in ${JSON.stringify(pattern)}`);
    }
  }
});

Deno.test("save: f16 and f64 adapters are written in their own dtype and load back into the model's", async () => {
  for (const [dtype, fileDtype] of [["f16", "F16"], ["f64", "F64"]] as const) {
    const build = () => node({ proj: new Linear(8, 6, { bias: false, dtype, seed: 2 }) });
    const model = build();
    patch(model, "proj", 2, 4);
    const files = adapterToFiles(model);
    const t = readSafetensors(files["adapter_model.safetensors"]).tensors.get(
      "base_model.model.proj.lora_B.weight",
    )!;
    assert.equal(t.dtype, fileDtype);
    const fresh = node({ proj: new Linear(8, 6, { bias: false, dtype: "f32" }) });
    await loadAdapter(fresh, files);
    const l = moduleAt(fresh, "proj") as LinearLoRA;
    assert.equal(l.lora_B.weight.dtype, "f32", "converted to the receiving model's dtype");
    assert.deepEqual(Array.from(l.lora_B.weight.dataSync()), Array.from(t.data as ArrayLike<number>));
  }
});

Deno.test("save: a model off the CPU needs the async path; adapterToFiles says so with a DeviceError", async () => {
  // A device that reports itself as a GPU but computes on the CPU backend: synchronous reads are refused.
  const fakeGpu = new Device(createCpuBackend(), "webgpu", "fake GPU for tests");
  const model = node({ proj: new Linear(8, 6, { bias: false, device: fakeGpu, seed: 1 }) });
  patch(model, "proj", 2, 4);
  assert.throws(
    () => adapterToFiles(model),
    (e: Error) => e instanceof DeviceError && e.message.includes("saveAdapter") && e.message.includes("proj"),
  );
  const files = await adapterToFilesAsync(model);
  const fresh = node({ proj: new Linear(8, 6, { bias: false }) });
  await loadAdapter(fresh, files);
  const l = moduleAt(fresh, "proj") as LinearLoRA;
  assert.deepEqual(
    l.lora_B.weight.dataSync(),
    await (moduleAt(model, "proj") as LinearLoRA).lora_B.weight.data(),
  );
});

Deno.test("save: a model without LoRA layers is a ConfigError", () => {
  assert.throws(
    () => adapterToFiles(tinyLlamaTree()),
    (e: Error) => e instanceof ConfigError && /no LoRA layers/.test(e.message),
  );
});
