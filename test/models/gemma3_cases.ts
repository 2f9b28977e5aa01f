/**
 * The Gemma 3 reference case of scripts/make_gemma3_cases.py (gemma3-sliding: sliding and full layers,
 * 12 positions against a window of 5, left and right padding), checked on any device: loaded through
 * AutoModelForCausalLM and PEFT's API (PeftModel.fromPretrained), then base logits on the fused and the
 * eager attention paths, LoRA logits, loss, every LoRA gradient, three AdamW steps, greedy tokens (without
 * early stop, and with the default stop at generation_config.json's EOS ids) and merged logits against
 * transformers 5.17 + PEFT 0.21. Shared by the CPU and the WebGPU tests.
 */
import assert from "node:assert/strict";
import {
  AdamW,
  AutoModelForCausalLM,
  type Device,
  Gemma3ForCausalLM,
  PeftModel,
  type Tensor,
} from "../../mod.ts";
import { relErr } from "../helpers.ts";
import { caseDir, caseInputs, greedyRows } from "./family_cases.ts";

/** The case directory under test/fixtures/. */
export const GEMMA3_CASE = "gemma3-sliding";

/**
 * Runs the whole case on `device` within `tol`; `note` sees every relative error (the GPU suite prints
 * the worst ones).
 */
export async function runGemma3Case(
  device: Device,
  tol: number,
  note: (what: string, err: number) => void = () => {},
): Promise<void> {
  const name = GEMMA3_CASE, dir = caseDir(name);
  const { golden, input, attentionMask, labels } = caseInputs(name);
  const check = async (what: string, t: Tensor | number[], key: string) => {
    const err = relErr(Array.isArray(t) ? t : await t.data(), golden.get(key)!.data);
    note(`${name} ${what.split(" ")[0]}`, err);
    assert.ok(err <= tol, `${name} ${what}: relative error ${err.toExponential(3)} > ${tol}`);
  };

  const model = await AutoModelForCausalLM.fromPretrained(`${dir}base`, { device });
  assert.ok(model instanceof Gemma3ForCausalLM, `${name}: got ${model.constructor.name}`);
  await check("logits_base (fused attention)", model.forward(input, { attentionMask }).logits, "logits_base");
  model.attnImplementation = "eager";
  await check("logits_base_eager", model.forward(input, { attentionMask }).logits, "logits_base");
  model.attnImplementation = "fused";

  const pm = await PeftModel.fromPretrained(model, `${dir}adapter`, { trainable: true });
  const out = pm.forward(input, { attentionMask, labels }) as { logits: Tensor; loss: Tensor };
  await check("logits_lora", out.logits, "logits_lora");
  await check("loss", [await out.loss.item()], "loss");
  out.loss.backward();
  const trainable = model.namedParameters().filter(([, p]) => p.requiresGrad);
  assert.equal(trainable.length, [...golden.keys()].filter((k) => k.startsWith("grad.")).length);
  for (const [n, p] of trainable) await check(`grad ${n}`, p.grad!, `grad.base_model.model.${n}`);

  const opt = new AdamW(trainable.map(([, p]) => p), { lr: 1e-2 });
  opt.zeroGrad();
  const losses: Tensor[] = [];
  for (let step = 0; step < 3; step++) {
    const { loss } = pm.forward(input, { attentionMask, labels }) as { loss: Tensor };
    losses.push(loss);
    loss.backward();
    opt.step();
    opt.zeroGrad();
  }
  const lossValues = [];
  for (const l of losses) lossValues.push(await l.item());
  await check("adamw_losses", lossValues, "adamw_losses");
  model.eval();
  await check("logits_trained", model.forward(input, { attentionMask }).logits, "logits_trained");

  const free = greedyRows(golden, "greedy_tokens");
  assert.deepEqual(
    await pm.generate(free.prompts, { maxNewTokens: free.newTokens, eosTokenId: null }),
    free.expected,
    `${name} greedy tokens without early stop`,
  );
  const eos = model.defaultEosTokenId;
  assert.ok(Array.isArray(eos) && eos.length === 2, `${name}: generation_config.json's two EOS ids`);
  const stop = greedyRows(golden, "greedy_tokens_eos", eos as number[]);
  assert.deepEqual(
    await pm.generate(stop.prompts, { maxNewTokens: stop.newTokens }),
    stop.expected,
    `${name} greedy tokens stopping at generation_config.json's EOS ids`,
  );

  const merged = await pm.mergeAndUnload();
  assert.equal(merged, model);
  await check("logits_merged", model.forward(input, { attentionMask }).logits, "logits_merged");
}
