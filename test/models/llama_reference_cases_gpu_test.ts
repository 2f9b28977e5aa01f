/**
 * The extra transformers + PEFT reference cases (tied embeddings with biases, rsLoRA patterns, BF16
 * weights, Llama 3 rope scaling with sharded weights, Mistral; see scripts/make_reference_cases.py) on
 * WebGPU, with padding masks: logits, loss, gradients, AdamW, greedy tokens and merge within 1e-4.
 */
import assert from "node:assert/strict";
import { AdamW, type Device, LlamaForCausalLM, loadAdapter, mergeAndUnload, type Tensor } from "../../mod.ts";
import { loadFixture, relErr } from "../helpers.ts";
import { gpu, gpuTest } from "../backend/webgpu/gpu.ts";
import { note, printWorst } from "../backend/webgpu/compare.ts";

const CASES = ["tied-bias", "rslora-patterns", "bf16", "rope3-shards", "mistral"];
const TOL = 1e-4;

/** Prompts without their left padding, and the expected rows (prompt + new tokens). */
function greedyCase(golden: ReturnType<typeof loadFixture>) {
  const gp = golden.get("greedy_prompt")!,
    gm = golden.get("greedy_prompt_mask")!,
    gt = golden.get("greedy_tokens")!;
  const [rows, plen] = gp.shape, total = gt.shape[1];
  const prompts: number[][] = [], expected: number[][] = [];
  for (let b = 0; b < rows; b++) {
    const real = (j: number) => gm.data[b * plen + j] === 1;
    prompts.push([...Array(plen).keys()].filter(real).map((j) => gp.data[b * plen + j]));
    expected.push(
      [...Array(total).keys()].filter((j) => j >= plen || real(j)).map((j) => gt.data[b * total + j]),
    );
  }
  return { prompts, expected, newTokens: total - plen };
}

async function runCase(name: string, device: Device): Promise<void> {
  const dir = new URL(`../fixtures/llama-${name}/`, import.meta.url).pathname;
  const golden = loadFixture(`llama-${name}/golden.safetensors`);
  const ids = golden.get("input_ids")!, mask = golden.get("attention_mask")!;
  const input = { data: Array.from(ids.data), shape: ids.shape };
  const attentionMask = { data: Array.from(mask.data), shape: mask.shape };
  const labels = { data: Array.from(ids.data, (v, i) => (mask.data[i] === 1 ? v : -100)), shape: ids.shape };
  const check = async (what: string, t: Tensor | number[], key: string) => {
    const err = relErr(Array.isArray(t) ? t : await t.data(), golden.get(key)!.data);
    note(`${name} ${key.split(".")[0]}`, err);
    assert.ok(err <= TOL, `${name} ${what}: relative error ${err.toExponential(3)} > ${TOL}`);
  };

  const model = await LlamaForCausalLM.fromPretrained(`${dir}base`, { device });
  await check("logits_base", model.forward(input, { attentionMask }).logits, "logits_base");
  await loadAdapter(model, `${dir}adapter`);
  const out = model.forward(input, { attentionMask, labels });
  await check("logits_lora", out.logits, "logits_lora");
  await check("loss", [await out.loss!.item()], "loss");
  out.loss!.backward();
  const trainable = model.namedParameters().filter(([, p]) => p.requiresGrad);
  assert.equal(trainable.length, [...golden.keys()].filter((k) => k.startsWith("grad.")).length);
  for (const [n, p] of trainable) await check(`grad ${n}`, p.grad!, `grad.base_model.model.${n}`);

  const opt = new AdamW(trainable.map(([, p]) => p), { lr: 1e-2 });
  opt.zeroGrad();
  const losses: Tensor[] = [];
  for (let step = 0; step < 3; step++) {
    const { loss } = model.forward(input, { attentionMask, labels });
    losses.push(loss!);
    loss!.backward();
    opt.step();
    opt.zeroGrad();
  }
  const lossValues = [];
  for (const l of losses) lossValues.push(await l.item());
  await check("adamw_losses", lossValues, "adamw_losses");
  await check("logits_trained", model.forward(input, { attentionMask }).logits, "logits_trained");
  const g = greedyCase(golden);
  assert.deepEqual(
    await model.generate(g.prompts, { maxNewTokens: g.newTokens }),
    g.expected,
    `${name} greedy tokens`,
  );
  await mergeAndUnload(model);
  await check("logits_merged", model.forward(input, { attentionMask }).logits, "logits_merged");
}

for (const name of CASES) {
  gpuTest(
    `reference case llama-${name} on WebGPU matches transformers + PEFT within 1e-4`,
    async (device) => {
      await runCase(name, device);
    },
  );
}

Deno.test({
  name: "golden llama cases errors summary",
  ignore: gpu === null,
  fn: () => printWorst("llama cases"),
});
