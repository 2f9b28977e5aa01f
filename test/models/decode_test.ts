/**
 * The device decoding loop (src/models/decode.ts through generateTokens) against the reference loop
 * (generateTokensReference: logits read back every step, tokens chosen on the host by the kernels' CPU
 * twins): equal tokens for greedy and seeded sampling, ragged prompts, EOS inside a read window, every
 * window length, on the CPU and on WebGPU (f32; f16 across windows), for Llama, Qwen2 (biases, tied head) and Qwen3
 * (q/k norms); batched greedy rows equal each row generated alone.
 */
import assert from "node:assert/strict";
import {
  AutoModelForCausalLM,
  type GenerateOptions,
  getPeftModel,
  type LlamaForCausalLM,
  LoraConfig,
  quantizeModel,
  randn,
  scale,
} from "../../mod.ts";
import { generateTokens, generateTokensReference } from "../../src/models/generate.ts";
import { type DecodeKernels, isDecoderModel } from "../../src/models/decode.ts";
import type { Tensor } from "../../src/tensor/mod.ts";
import { tinyModel, tokenRows } from "./tiny_model.ts";
import { caseDir } from "./family_cases.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";

/** Ragged prompts (lengths 5, 2, 7) of a vocabulary of `vocab`. */
const ragged = (vocab: number) => [
  tokenRows(1, 5, vocab, 1)[0],
  tokenRows(1, 2, vocab, 2)[0],
  tokenRows(1, 7, vocab, 3)[0],
];

const SETTINGS: GenerateOptions[] = [
  { maxNewTokens: 9, eosTokenId: null },
  { maxNewTokens: 9, eosTokenId: null, readEvery: 1 },
  { maxNewTokens: 9, eosTokenId: null, readEvery: 4 },
  { maxNewTokens: 9, eosTokenId: null, greedy: false, seed: 11, temperature: 1.3 },
  { maxNewTokens: 9, eosTokenId: null, greedy: false, seed: 12, topK: 5, readEvery: 2 },
  { maxNewTokens: 9, eosTokenId: null, greedy: false, seed: 13, topP: 0.8, temperature: 0.9, readEvery: 3 },
];

/** Counts the model's full forwards (the device loop runs one, the prefill; the reference one per token). */
function countForwards(model: LlamaForCausalLM): { n: number } {
  const c = { n: 0 };
  const step = model.forwardStep.bind(model);
  model.forwardStep = (ids, o) => {
    c.n++;
    return step(ids, o);
  };
  return c;
}

async function deviceEqualsReference(
  model: LlamaForCausalLM,
  label: string,
  kernels: DecodeKernels = {},
): Promise<void> {
  const generateTokensWith = (m: LlamaForCausalLM, p: number[][], o: GenerateOptions) =>
    generateTokens(m, p, o, kernels);
  assert.ok(isDecoderModel(model), `${label}: the device loop applies`);
  const vocab = model.config.vocabSize;
  const prompts = ragged(vocab);
  const forwards = countForwards(model);
  for (const opts of SETTINGS) {
    forwards.n = 0;
    const ours = await generateTokensWith(model, prompts, opts);
    assert.equal(forwards.n, 1, `${label}: the device loop runs only the prefill through forward`);
    const ref = await generateTokensReference(model, prompts, opts);
    assert.deepEqual(ours, ref, `${label} ${JSON.stringify(opts)}`);
  }
  // EOS inside a read window: row 0 stops at its third new token, the others run on.
  const free = await generateTokensReference(model, prompts, { maxNewTokens: 9, eosTokenId: null });
  const eos = free[0][5 + 2];
  for (const readEvery of [1, 4, 16]) {
    const opts = { maxNewTokens: 9, eosTokenId: eos, readEvery };
    assert.deepEqual(
      await generateTokensWith(model, prompts, opts),
      await generateTokensReference(model, prompts, opts),
      `${label}: eos ${eos} with readEvery ${readEvery}`,
    );
  }
  const stopped = await generateTokensWith(model, prompts, {
    maxNewTokens: 9,
    eosTokenId: eos,
    readEvery: 16,
  });
  assert.ok(stopped[0].length <= 5 + 3 && stopped[0].at(-1) === eos, `${label}: row 0 stops at EOS`);
  // Batched greedy rows equal each row alone (left padding changes nothing a row sees).
  const batched = await generateTokensWith(model, prompts, { maxNewTokens: 6, eosTokenId: null });
  for (let b = 0; b < prompts.length; b++) {
    assert.deepEqual(
      (await generateTokensWith(model, [prompts[b]], { maxNewTokens: 6, eosTokenId: null }))[0],
      batched[b],
      `${label}: row ${b} alone`,
    );
  }
}

Deno.test("device decoding equals the reference loop on the CPU (Llama, greedy and sampled, ragged, EOS)", async () => {
  await deviceEqualsReference(tinyModel(), "llama cpu");
  await deviceEqualsReference(tinyModel(), "llama cpu, norms apart", { fuseNorm: false });
});

Deno.test("device decoding equals the reference loop on the CPU for Qwen2 (biases, tied), Qwen3 (q/k norms), Phi-3 (fused projections)", async () => {
  for (const name of ["qwen2-tied", "qwen3-gqa", "phi3-gqa"]) {
    await deviceEqualsReference(
      await AutoModelForCausalLM.fromPretrained(`${caseDir(name)}base`),
      `${name} cpu`,
    );
  }
});

/** `model` with LoRA (rank 4) on `targets`, B random so the adapters change the tokens, in eval mode. */
function withLora(model: LlamaForCausalLM, targets = LORA_TARGETS): LlamaForCausalLM {
  getPeftModel(model, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: targets }));
  const dev = model.lm_head.weight.device;
  model.namedParameters().forEach(([path, p], i) => {
    if (path.endsWith("lora_B.weight")) {
      p._assign(scale(randn(p.shape, { device: dev, dtype: p.dtype, seed: i }), 0.3));
    }
  });
  return model.eval();
}

const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/** Calls of the layers' forward (the class of layer 0's up_proj: LinearLoRA, or Linear) while `fn` runs. */
async function loraForwards(model: LlamaForCausalLM, fn: () => Promise<unknown>): Promise<number> {
  type Fwd = { forward: (x: Tensor) => Tensor };
  const proto = Object.getPrototypeOf(model.model.layers[0].mlp.up_proj) as Fwd;
  const orig = proto.forward;
  let calls = 0;
  proto.forward = function (this: Fwd, x: Tensor) {
    calls++;
    return orig.call(this, x);
  };
  try {
    await fn();
  } finally {
    proto.forward = orig;
  }
  return calls;
}

Deno.test("LoRA-patched layers decode on the GEMV path and equal the reference loop (CPU)", async () => {
  for (const targets of [LORA_TARGETS, ["k_proj", "up_proj", "o_proj"]]) {
    const model = withLora(tinyModel(), targets);
    const prompts = ragged(model.config.vocabSize);
    await deviceEqualsReference(model, `llama cpu lora ${targets}`);
    const opts = { maxNewTokens: 6, eosTokenId: null };
    let ours: number[][] = [];
    const calls = await loraForwards(model, async () => (ours = await generateTokens(model, prompts, opts)));
    const adapted = targets.length * model.config.numHiddenLayers;
    assert.equal(calls, adapted, "only the prefill runs the adapted layers' forward");
    assert.notDeepEqual(
      ours,
      await generateTokensReference(tinyModel(), prompts, opts),
      "the adapters matter",
    );
  }
});

Deno.test("quantized (NF4, int8) layers decode on the GEMV path and equal the reference loop (CPU)", async () => {
  for (const scheme of ["nf4", "int8"] as const) {
    const model = tinyModel();
    quantizeModel(model, { scheme, blockSize: 16 });
    await deviceEqualsReference(model, `llama cpu ${scheme}`);
    const prompts = ragged(model.config.vocabSize);
    const forwards = (n: number) =>
      loraForwards(model, () => generateTokens(model, prompts, { maxNewTokens: n, eosTokenId: null }));
    assert.equal(await forwards(6), await forwards(1), `${scheme}: the steps run no Linear forward`);
  }
});

Deno.test("Gemma 3 is not a decoder model of the device step ((1 + w) norms): generateTokens runs the reference loop", async () => {
  const model = await AutoModelForCausalLM.fromPretrained(`${caseDir("gemma3-sliding")}base`);
  assert.equal(isDecoderModel(model), false);
  const prompts = ragged(model.config.vocabSize);
  const opts = { maxNewTokens: 5, eosTokenId: null };
  assert.deepEqual(
    await generateTokens(model, prompts, opts),
    await generateTokensReference(model, prompts, opts),
  );
});

Deno.test("the device loop leaves no tensors behind", async () => {
  const model = tinyModel();
  const be = model.lm_head.weight.device.backend;
  await generateTokens(model, ragged(64), { maxNewTokens: 5, eosTokenId: null }); // warm caches
  const before = be.memory();
  await generateTokens(model, ragged(64), { maxNewTokens: 7, greedy: false, seed: 1, readEvery: 3 });
  await generateTokens(model, ragged(64), { maxNewTokens: 7, eosTokenId: 3, readEvery: 2 });
  assert.deepEqual(be.memory(), before);
});

Deno.test("readEvery must be a positive integer", async () => {
  await assert.rejects(() => tinyModel().generate([[1]], { maxNewTokens: 2, readEvery: 0 }), /readEvery/);
});

gpuTest(
  "device decoding equals the reference loop on WebGPU (Llama f32, GEMM and GEMV linears)",
  async (dev) => {
    const model = await tinyModel().to(dev);
    await deviceEqualsReference(model, "llama webgpu f32");
    await deviceEqualsReference(model, "llama webgpu f32 gemv", { gemv: true });
    await deviceEqualsReference(model, "llama webgpu f32 gemv, norms apart", { gemv: true, fuseNorm: false });
  },
);

gpuTest(
  "device decoding equals the reference loop on WebGPU (NF4-quantized Llama f32, GEMV kernels)",
  async (dev) => {
    const model = await tinyModel().to(dev);
    quantizeModel(model, { scheme: "nf4", blockSize: 16 });
    await deviceEqualsReference(model, "llama webgpu nf4 gemv", { gemv: true });
  },
);

gpuTest(
  "device decoding equals the reference loop on WebGPU (LoRA-patched Llama f32, GEMV kernels)",
  async (dev) => {
    const model = withLora(await tinyModel().to(dev));
    await deviceEqualsReference(model, "llama webgpu lora gemv", { gemv: true });
  },
);

gpuTest(
  "device decoding equals the reference loop on WebGPU (Qwen2, Qwen3, Phi-3 f32, GEMV kernels)",
  async (dev) => {
    for (const name of ["qwen2-tied", "qwen3-gqa", "phi3-gqa"]) {
      const model = await AutoModelForCausalLM.fromPretrained(`${caseDir(name)}base`, { device: dev });
      await deviceEqualsReference(model, `${name} webgpu gemv`, { gemv: true });
    }
  },
);

gpuTest("f16 decoding on WebGPU: the read window does not change the tokens", async (dev) => {
  if (!dev.backend.supportsDType("f16")) return; // no shader-f16 on this adapter: nothing to run in f16
  // f16 logits of two different kernel compositions may differ in their last bit, so f16 is compared
  // against itself across windows (and both loops' f32 runs above against each other).
  const model = await AutoModelForCausalLM.fromPretrained(`${caseDir("qwen3-gqa")}base`, {
    device: dev,
    dtype: "f16",
  });
  const prompts = ragged(model.config.vocabSize);
  for (const base of SETTINGS) {
    const one = await generateTokens(model, prompts, { ...base, readEvery: 1 }, { gemv: true });
    const many = await generateTokens(model, prompts, { ...base, readEvery: 5 }, { gemv: true });
    assert.deepEqual(many, one, JSON.stringify(base));
  }
});
