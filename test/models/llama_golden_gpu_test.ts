/**
 * The Llama golden cases (transformers 5.17 + PEFT 0.21, test/fixtures/llama-tiny-lora) on WebGPU:
 * logits, loss, LoRA gradients, five AdamW steps, greedy decoding and merging, at relative error ≤ 1e-4.
 */
import assert from "node:assert/strict";
import { AdamW, type Device, LlamaForCausalLM, loadAdapter, mergeAndUnload, type Tensor } from "../../mod.ts";
import { loadFixture, relErr } from "../helpers.ts";
import { gpu, gpuTest } from "../backend/webgpu/gpu.ts";
import { note, printWorst } from "../backend/webgpu/compare.ts";

const DIR = new URL("../fixtures/llama-tiny-lora/", import.meta.url).pathname;
const golden = loadFixture("llama-tiny-lora/golden.safetensors");
const ref = (k: string) => {
  const v = golden.get(k);
  if (v === undefined) throw new Error(`golden.safetensors has no ${k}`);
  return v;
};
const ids = ref("input_ids");
const input = { data: Array.from(ids.data), shape: ids.shape };
const TOL = 1e-4;

async function loadWithAdapter(device: Device): Promise<LlamaForCausalLM> {
  const model = await LlamaForCausalLM.fromPretrained(`${DIR}base`, { device });
  await loadAdapter(model, `${DIR}adapter`);
  return model;
}

async function check(name: string, t: Tensor | number[], key: string): Promise<void> {
  const ours = Array.isArray(t) ? t : await t.data();
  const err = relErr(ours, ref(key).data);
  note(`golden llama ${key.split(".")[0]}`, err);
  assert.ok(err <= TOL, `${name}: relative error ${err.toExponential(3)} > ${TOL}`);
}

gpuTest("golden llama on WebGPU: base logits, adapter logits and loss within 1e-4", async (device) => {
  const base = await LlamaForCausalLM.fromPretrained(`${DIR}base`, { device });
  await check("logits_base", base.forward(input).logits, "logits_base");
  const model = await loadWithAdapter(device);
  const { logits, loss } = model.forward(input, { labels: input });
  assert.equal(logits.device, device);
  await check("logits_lora", logits, "logits_lora");
  await check("loss", [await loss!.item()], "loss");
});

gpuTest("golden llama on WebGPU: every LoRA gradient within 1e-4 of PEFT's", async (device) => {
  const model = await loadWithAdapter(device);
  model.forward(input, { labels: input }).loss!.backward();
  const named = model.namedParameters().filter(([, p]) => p.requiresGrad);
  assert.equal(named.length, [...golden.keys()].filter((k) => k.startsWith("grad.")).length);
  for (const [name, p] of named) await check(name, p.grad!, `grad.base_model.model.${name}`);
});

gpuTest(
  "golden llama on WebGPU: five AdamW steps, greedy decoding and merging match transformers",
  async (device) => {
    const model = await loadWithAdapter(device);
    const opt = new AdamW(model.trainableParameters(), {
      lr: 1e-2,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 0.01,
    });
    const losses: Tensor[] = [];
    for (let step = 0; step < 5; step++) {
      const { loss } = model.forward(input, { labels: input });
      losses.push(loss!);
      loss!.backward();
      opt.step();
      opt.zeroGrad();
    }
    const values = [];
    for (const l of losses) values.push(await l.item());
    await check("adamw_losses", values, "adamw_losses");
    const logitsTrained = model.forward(input).logits;
    await check("logits_trained", logitsTrained, "logits_trained");
    const tokens = await model.generate([Array.from(ref("greedy_prompt").data)], { maxNewTokens: 8 });
    assert.deepEqual(tokens, [Array.from(ref("greedy_tokens").data)]);
    await mergeAndUnload(model);
    const sd = model.stateDict();
    for (const name of ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]) {
      await check(name, sd[name], `merged.${name}`);
    }
    await check("logits_merged", model.forward(input).logits, "logits_merged");
  },
);

Deno.test({ name: "golden llama errors summary", ignore: gpu === null, fn: () => printWorst("llama") });
