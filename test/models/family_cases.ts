/**
 * The Qwen2 / Qwen3 / Phi-3 reference cases of scripts/make_family_cases.py, checked on any device: loaded
 * through AutoModelForCausalLM, then base and LoRA logits, loss, every LoRA gradient, three AdamW steps,
 * greedy tokens (without early stop, and with the default stop at generation_config.json's EOS ids) and
 * merged logits against transformers 5.17 + PEFT 0.21. Shared by the CPU and the WebGPU tests.
 */
import assert from "node:assert/strict";
import {
  AdamW,
  AutoModelForCausalLM,
  type Device,
  type LlamaForCausalLM,
  loadAdapter,
  mergeAndUnload,
  Phi3ForCausalLM,
  Qwen2ForCausalLM,
  Qwen3ForCausalLM,
  type Tensor,
} from "../../mod.ts";
import { loadFixture, relErr } from "../helpers.ts";

/** Case directories under test/fixtures/, with the class AutoModelForCausalLM must pick. */
export const FAMILY_CASES: Record<string, typeof LlamaForCausalLM> = {
  "qwen2-tied": Qwen2ForCausalLM,
  "qwen3-gqa": Qwen3ForCausalLM,
  "qwen3-bias-tied": Qwen3ForCausalLM,
  "phi3-gqa": Phi3ForCausalLM,
};

/** The fixture directory of a case, with a trailing slash. */
export function caseDir(name: string): string {
  return new URL(`../fixtures/${name}/`, import.meta.url).pathname;
}

/** Golden tensors and the forward inputs of a case. */
export function caseInputs(name: string) {
  const golden = loadFixture(`${name}/golden.safetensors`);
  const ids = golden.get("input_ids")!, mask = golden.get("attention_mask")!;
  return {
    golden,
    input: { data: Array.from(ids.data), shape: ids.shape },
    attentionMask: { data: Array.from(mask.data), shape: mask.shape },
    labels: { data: Array.from(ids.data, (v, i) => (mask.data[i] === 1 ? v : -100)), shape: ids.shape },
  };
}

/**
 * The left-padded reference prompts as ragged rows, and the expected rows for `key`: prompt plus new
 * tokens, cut after the first EOS when `eos` is given (transformers pads finished rows; we stop them).
 */
export function greedyRows(golden: ReturnType<typeof loadFixture>, key: string, eos: number[] = []) {
  const gp = golden.get("greedy_prompt")!, gm = golden.get("greedy_prompt_mask")!, gt = golden.get(key)!;
  const [rows, plen] = gp.shape, total = gt.shape[1];
  const prompts: number[][] = [], expected: number[][] = [];
  for (let b = 0; b < rows; b++) {
    const real = (j: number) => gm.data[b * plen + j] === 1;
    prompts.push([...Array(plen).keys()].filter(real).map((j) => gp.data[b * plen + j]));
    const row = [...Array(plen).keys()].filter(real).map((j) => gp.data[b * plen + j]);
    for (let j = plen; j < total; j++) {
      row.push(gt.data[b * total + j]);
      if (eos.includes(gt.data[b * total + j])) break;
    }
    expected.push(row);
  }
  return { prompts, expected, newTokens: total - plen };
}

/**
 * Runs a whole case on `device` within `tol`; `note` sees every relative error (the GPU suite prints
 * the worst ones).
 */
export async function runFamilyCase(
  name: string,
  device: Device,
  tol: number,
  note: (what: string, err: number) => void = () => {},
): Promise<void> {
  const dir = caseDir(name);
  const { golden, input, attentionMask, labels } = caseInputs(name);
  const check = async (what: string, t: Tensor | number[], key: string) => {
    const err = relErr(Array.isArray(t) ? t : await t.data(), golden.get(key)!.data);
    note(`${name} ${key.split(".")[0]}`, err);
    assert.ok(err <= tol, `${name} ${what}: relative error ${err.toExponential(3)} > ${tol}`);
  };

  const model = await AutoModelForCausalLM.fromPretrained(`${dir}base`, { device });
  assert.ok(model instanceof FAMILY_CASES[name], `${name}: got ${model.constructor.name}`);
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

  const free = greedyRows(golden, "greedy_tokens");
  assert.deepEqual(
    await model.generate(free.prompts, { maxNewTokens: free.newTokens, eosTokenId: null }),
    free.expected,
    `${name} greedy tokens without early stop`,
  );
  const eos = model.defaultEosTokenId;
  assert.ok(Array.isArray(eos) && eos.length === 2, `${name}: generation_config.json's two EOS ids`);
  const stop = greedyRows(golden, "greedy_tokens_eos", eos as number[]);
  assert.deepEqual(
    await model.generate(stop.prompts, { maxNewTokens: stop.newTokens }),
    stop.expected,
    `${name} greedy tokens stopping at generation_config.json's EOS ids`,
  );

  await mergeAndUnload(model);
  await check("logits_merged", model.forward(input, { attentionMask }).logits, "logits_merged");
}
