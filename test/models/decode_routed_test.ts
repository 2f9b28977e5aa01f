/**
 * The device decoding step (src/models/decode.ts) with batch rows routed to several adapters (PeftModel's
 * `adapterNames`): the base GEMVs as for one adapter, then one mixed-batch pass (LORA_ROWS_PARTS) per
 * projection group adds each row's own terms. Against the reference loop (the routed forward, logits read
 * back every step) and against each row generated alone on the single-adapter path: equal greedy and
 * sampled tokens, per-step logits within 1e-5 (CPU) and 1e-4 (WebGPU), adapters of different ranks and
 * different target sets, `"__base__"` rows, ragged prompts; Llama, Qwen2 (biases), Qwen3 (q/k norms) and
 * Phi-3 (fused q|k|v and gate|up weights); new adapter weights and a hot swap between generations. And
 * that the fast path ran: no adapted layer's forward after the prefill, one routed pass per group and
 * layer per step, and no more dispatches per step than the single-adapter step (as many for Llama).
 */
import assert from "node:assert/strict";
import {
  AutoModelForCausalLM,
  type Device,
  type GenerateOptions,
  getPeftModel,
  type LlamaForCausalLM,
  LoraConfig,
  manualSeed,
  type PeftModel,
  randn,
  scale,
  tensor,
} from "../../mod.ts";
import { generateTokens, generateTokensReference, KVCache } from "../../src/models/generate.ts";
import { DecodeConstants, type DecodeKernels, decodeStep, StaticKVCache } from "../../src/models/decode.ts";
import { RopeTables } from "../../src/models/rope.ts";
import { LinearLoRA } from "../../src/peft/lora_linear.ts";
import type { Tensor } from "../../src/tensor/mod.ts";
import { tinyModel, tokenRows } from "./tiny_model.ts";
import { caseDir } from "./family_cases.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";
import { relErr } from "../helpers.ts";

/** Every projection name of the Llama family, Phi-3's fused ones included (absent ones match nothing). */
const ALL = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
  "qkv_proj",
  "gate_up_proj",
];

/**
 * Three adapters of ranks 4, 2 and 8 with different scales and target sets (a0 all projections, a1 the
 * attention's input side and down, a2 k, o and the MLP's input side), B non-zero, eval mode.
 */
function threeAdapters<M extends LlamaForCausalLM>(model: M): PeftModel<M> {
  manualSeed(5);
  const config = (r: number, alpha: number, targets: string[]) =>
    new LoraConfig({ r, loraAlpha: alpha, targetModules: targets, initLoraWeights: false });
  const pm = getPeftModel(model, config(4, 8, ALL), { adapterName: "a0" });
  pm.addAdapter("a1", config(2, 6, ["q_proj", "v_proj", "down_proj", "qkv_proj"]));
  pm.addAdapter("a2", config(8, 4, ["k_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj"]));
  return pm.eval();
}

/** Runs `fn` while every layer of `pm` routes batch row i to `names[i]` (as `generate` with `adapterNames`). */
async function routed<T>(pm: PeftModel<LlamaForCausalLM>, names: string[], fn: () => Promise<T>): Promise<T> {
  const base = pm.baseModel as unknown as { generate?: unknown };
  let out: T | undefined;
  base.generate = async () => {
    out = await fn();
    return [];
  };
  try {
    await pm.generate(names.map(() => [0]), { adapterNames: names });
  } finally {
    delete base.generate;
  }
  return out!;
}

/** Names of the records `fn` dispatches through the model's backend, with their counts. */
async function dispatches(model: LlamaForCausalLM, fn: () => Promise<unknown>): Promise<Map<string, number>> {
  const be = model.lm_head.weight.device.backend as unknown as {
    run: (r: { name: string }, ...rest: unknown[]) => unknown;
  };
  const counts = new Map<string, number>();
  const run = be.run;
  be.run = function (this: unknown, record: { name: string }, ...rest: unknown[]) {
    counts.set(record.name, (counts.get(record.name) ?? 0) + 1);
    return run.call(this, record, ...rest);
  };
  try {
    await fn();
  } finally {
    be.run = run;
  }
  return counts;
}

const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);

/** Calls of LinearLoRA's forward while `fn` runs (the device steps make none; the prefill one per layer). */
async function loraForwards(fn: () => Promise<unknown>): Promise<number> {
  const orig = LinearLoRA.prototype.forward;
  let calls = 0;
  LinearLoRA.prototype.forward = function (this: LinearLoRA, x: Tensor) {
    calls++;
    return orig.call(this, x);
  };
  try {
    await fn();
  } finally {
    LinearLoRA.prototype.forward = orig;
  }
  return calls;
}

/** Ragged prompts (lengths 5, 2, 7, 3, 4) of a vocabulary of `vocab`. */
const ragged = (vocab: number) => [5, 2, 7, 3, 4].map((len, i) => tokenRows(1, len, vocab, i + 1)[0]);

/** Rows over all three adapters, one of them twice, and a base row. */
const NAMES = ["a1", "__base__", "a0", "a2", "a1"];

const GREEDY: GenerateOptions = { maxNewTokens: 5, eosTokenId: null };
const SAMPLED: GenerateOptions = {
  maxNewTokens: 5,
  eosTokenId: null,
  greedy: false,
  seed: 9,
  topK: 6,
  readEvery: 2,
};

/** The mixed batch's tokens by the device loop equal the reference loop's and each row's alone. */
async function tokensAgree(pm: PeftModel<LlamaForCausalLM>, label: string, kernels: DecodeKernels) {
  const model = pm.baseModel, prompts = ragged(model.config.vocabSize);
  let batched: number[][] = [];
  for (const opts of [GREEDY, SAMPLED]) {
    const ours = await routed(pm, NAMES, () => generateTokens(model, prompts, opts, kernels));
    const ref = await routed(pm, NAMES, () => generateTokensReference(model, prompts, opts));
    assert.deepEqual(ours, ref, `${label}: device loop = reference loop ${JSON.stringify(opts)}`);
    if (opts === GREEDY) batched = ours;
  }
  // Each row alone through the single-adapter path (the active adapter; the base row with adapters off).
  for (let b = 0; b < prompts.length; b++) {
    const alone = async () => (await generateTokens(model, [prompts[b]], GREEDY, kernels))[0];
    let own: number[];
    if (NAMES[b] === "__base__") own = await pm.withAdapterDisabled(alone);
    else {
      pm.setAdapter(NAMES[b], { inferenceMode: true });
      own = await alone();
    }
    assert.deepEqual(batched[b], own, `${label}: row ${b} (${NAMES[b]}) alone`);
  }
  pm.setAdapter("a0", { inferenceMode: true });
  const base = await pm.withAdapterDisabled(() => generateTokens(model, prompts, GREEDY, kernels));
  assert.notDeepEqual(batched, base, `${label}: the adapters change the tokens`);
}

/**
 * The fast path ran for the mixed batch: no adapted layer's forward after the prefill, one
 * lora_rows_parts pass per projection group (q|k|v, o, gate|up, down) and layer per step, and the same
 * number of dispatches per step as one adapter (a0, every projection) over the same rows, or fewer.
 * Returns both per-step counts.
 */
async function fastPathRan(pm: PeftModel<LlamaForCausalLM>, label: string, kernels: DecodeKernels) {
  const model = pm.baseModel, prompts = ragged(model.config.vocabSize);
  const gen = (n: number) => () =>
    generateTokens(model, prompts, { maxNewTokens: n, eosTokenId: null }, kernels);
  const prefillOnly = await routed(pm, NAMES, () => loraForwards(gen(1)));
  assert.ok(prefillOnly > 0, `${label}: the prefill runs the routed layers' forward`);
  assert.equal(
    await routed(pm, NAMES, () => loraForwards(gen(5))),
    prefillOnly,
    `${label}: steps run no forward`,
  );
  const mixed2 = await routed(pm, NAMES, () => dispatches(model, gen(2)));
  const mixed5 = await routed(pm, NAMES, () => dispatches(model, gen(5)));
  const layers = model.config.numHiddenLayers;
  // 3 steps more (the first token comes from the prefill).
  const parts = (mixed5.get("lora_rows_parts") ?? 0) - (mixed2.get("lora_rows_parts") ?? 0);
  assert.equal(parts, 3 * 4 * layers, `${label}: one routed pass per group and layer per step`);
  pm.setAdapter("a0", { inferenceMode: true });
  const single2 = await dispatches(model, gen(2)), single5 = await dispatches(model, gen(5));
  assert.equal(single5.get("lora_rows_parts") ?? 0, 0);
  const perStep = (a: Map<string, number>, b: Map<string, number>) => (total(b) - total(a)) / 3;
  // Llama: equal. Qwen2's biases and Phi-3's fused gate_up keep one LoRA off the fused kernels, which
  // the routed terms (added after the base products) do not.
  const mixed = perStep(mixed2, mixed5), single = perStep(single2, single5);
  assert.ok(mixed <= single, `${label}: dispatches per step, mixed ${mixed} > single ${single}`);
  return { mixed, single };
}

/**
 * Per-step logits of the device step against the routed forward's (same tokens fed to both: the
 * reference's greedy choice), for prompts of one length, `steps` steps; and the routing tables are
 * uploaded by the first step only.
 */
async function logitsAgree(
  pm: PeftModel<LlamaForCausalLM>,
  tol: number,
  kernels: DecodeKernels,
  label: string,
): Promise<void> {
  const model = pm.baseModel, cfg = model.config, device: Device = model.lm_head.weight.device;
  const batch = NAMES.length, len = 4, steps = 3;
  const prompts = tokenRows(batch, len, cfg.vocabSize, 3);
  const argmax = (v: ArrayLike<number>) =>
    Int32Array.from({ length: batch }, (_, b) => {
      let best = 0;
      for (let i = 1; i < cfg.vocabSize; i++) {
        if (v[b * cfg.vocabSize + i] > v[b * cfg.vocabSize + best]) best = i;
      }
      return best;
    });
  await routed(pm, NAMES, async () => {
    const ids = { data: Int32Array.from(prompts.flat()), shape: [batch, len] as [number, number] };
    const opts = (cache: KVCache, n: number) => ({
      attentionMask: new Int32Array(batch * n).fill(1),
      positionIds: Int32Array.from(
        { length: batch * (n === len ? len : 1) },
        (_, i) => (n === len ? i % len : n - 1),
      ),
      cache,
    });
    const pre = new KVCache(cfg.numHiddenLayers), ref = new KVCache(cfg.numHiddenLayers);
    model.forwardStep(ids, opts(pre, len)).dispose();
    const first = model.forwardStep(ids, opts(ref, len));
    let tok = argmax(await first.data());
    first.dispose();
    const cache = new StaticKVCache(pre, len + steps);
    pre.dispose();
    const consts = new DecodeConstants(
      new RopeTables(cfg.headDim, cfg.rope),
      cache.capacity,
      new Int32Array(batch),
      device,
    );
    try {
      let tables = 0;
      for (let s = 0; s < steps; s++) {
        const feed = tensor(Float32Array.from(tok), [batch], { device, dtype: "f32" });
        const ours = decodeStep(model, feed, cache, consts, len + s, kernels);
        feed.dispose();
        const theirs = model.forwardStep({ data: tok, shape: [batch, 1] }, opts(ref, len + s + 1));
        const want = await theirs.data(), got = await ours.data();
        ours.dispose();
        theirs.dispose();
        const err = relErr(got, want);
        assert.ok(err <= tol, `${label}: step ${s} logits relative error ${err} > ${tol}`);
        if (s === 0) tables = consts.routed.size;
        else assert.equal(consts.routed.size, tables, `${label}: no table uploaded after the first step`);
        tok = argmax(want);
      }
      assert.ok(tables > 0, `${label}: the steps used routing tables`);
    } finally {
      consts.dispose();
      cache.dispose();
      ref.dispose();
    }
  });
}

Deno.test("mixed-adapter decoding (CPU): device loop = reference loop = each row alone; the routed fast path ran", async () => {
  const pm = threeAdapters(tinyModel());
  await tokensAgree(pm, "llama cpu", {});
  await tokensAgree(pm, "llama cpu, norms apart", { fuseNorm: false });
  const counts = await fastPathRan(pm, "llama cpu", {});
  assert.equal(counts.mixed, counts.single, "llama: as many dispatches per step as one adapter");
  await logitsAgree(pm, 1e-5, {}, "llama cpu");
  await logitsAgree(pm, 1e-5, { fuseNorm: false }, "llama cpu, norms apart");
});

Deno.test("mixed-adapter decoding (CPU) for Qwen2 (biases on q, k, v), Qwen3 (q/k norms) and Phi-3 (fused q|k|v and gate|up weights)", async () => {
  for (const name of ["qwen2-tied", "qwen3-gqa", "phi3-gqa"]) {
    const model = await AutoModelForCausalLM.fromPretrained(`${caseDir(name)}base`) as LlamaForCausalLM;
    const pm = threeAdapters(model);
    await tokensAgree(pm, `${name} cpu`, {});
    await fastPathRan(pm, `${name} cpu`, {});
    await logitsAgree(pm, 1e-5, {}, `${name} cpu`);
  }
});

Deno.test("mixed-adapter decoding follows new adapter weights (new storages) and a hot swap (written in place)", async () => {
  const pm = threeAdapters(tinyModel());
  const model = pm.baseModel, prompts = ragged(model.config.vocabSize);
  const gen = () => routed(pm, NAMES, () => generateTokens(model, prompts, GREEDY));
  const first = await gen();
  const dir = await Deno.makeTempDir({ prefix: "decode-routed-" });
  try {
    await pm.saveAdapter(dir, { selectedAdapters: ["a1"] });
    for (const [, a] of pm.adapterLayers("a1")) {
      const w = a.lora_B.weight;
      w._assign(scale(randn(w.shape, { device: w.device, dtype: w.dtype, seed: 17 }), 2));
    }
    const changed = await gen();
    assert.deepEqual(changed, await routed(pm, NAMES, () => generateTokensReference(model, prompts, GREEDY)));
    assert.notDeepEqual(changed, first, "a1's new weights change its rows");
    await pm.hotswapAdapter(`${dir}/a1`, "a1");
    assert.deepEqual(await gen(), first, "the swapped-in weights are a1's first ones again");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest(
  "mixed-adapter decoding on WebGPU (GEMV kernels): equal tokens and logits, the routed fast path ran",
  async (dev) => {
    const pm = threeAdapters(await tinyModel().to(dev));
    await tokensAgree(pm, "llama webgpu", { gemv: true });
    await fastPathRan(pm, "llama webgpu", { gemv: true });
    await logitsAgree(pm, 1e-4, { gemv: true }, "llama webgpu");
  },
);
