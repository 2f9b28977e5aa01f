/**
 * Extra transformers + PEFT reference cases made by scripts/make_reference_cases.py (tied embeddings with
 * biases and right padding, rsLoRA with rank/alpha patterns and a regex target, BF16 weights, Llama 3
 * rope scaling with sharded weights and left padding, a Mistral checkpoint). A case whose fixture
 * directory is absent is skipped with a note; regenerate them with the script's usage line.
 */
import assert from "node:assert/strict";
import { AdamW, cpuDevice, LlamaForCausalLM, loadAdapter, mergeAndUnload, type Tensor } from "../../mod.ts";
import { loadFixture, relErr } from "../helpers.ts";

const CASES = ["tied-bias", "rslora-patterns", "bf16", "rope3-shards", "mistral"];
const TOL = 1e-5;

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function runCase(name: string): Promise<void> {
  const dir = new URL(`../fixtures/llama-${name}/`, import.meta.url).pathname;
  const golden = loadFixture(`llama-${name}/golden.safetensors`);
  const ref = (k: string) => golden.get(k)!.data;
  const ids = golden.get("input_ids")!, mask = golden.get("attention_mask")!;
  const input = { data: Array.from(ids.data), shape: ids.shape };
  const attentionMask = { data: Array.from(mask.data), shape: mask.shape };
  const labels = { data: Array.from(ids.data, (v, i) => (mask.data[i] === 1 ? v : -100)), shape: ids.shape };
  const check = async (what: string, t: Tensor | number[], key: string) => {
    const err = relErr(Array.isArray(t) ? t : await t.data(), ref(key));
    assert.ok(err <= TOL, `${name} ${what}: relative error ${err.toExponential(3)} > ${TOL}`);
  };

  const model = await LlamaForCausalLM.fromPretrained(`${dir}base`, { device: cpuDevice() });
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
  const losses: number[] = [];
  for (let step = 0; step < 3; step++) {
    const { loss } = model.forward(input, { attentionMask, labels });
    losses.push(await loss!.item());
    loss!.backward();
    opt.step();
    opt.zeroGrad();
  }
  await check("adamw_losses", losses, "adamw_losses");
  await check("logits_trained", model.forward(input, { attentionMask }).logits, "logits_trained");

  // The reference prompts are left-padded; generate takes ragged rows and pads them itself.
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
  assert.deepEqual(
    await model.generate(prompts, { maxNewTokens: total - plen }),
    expected,
    `${name} greedy tokens`,
  );

  await mergeAndUnload(model);
  await check("logits_merged", model.forward(input, { attentionMask }).logits, "logits_merged");
}

for (const name of CASES) {
  const present = exists(new URL(`../fixtures/llama-${name}/golden.safetensors`, import.meta.url).pathname);
  if (!present) {
    console.log(
      `note: test/fixtures/llama-${name} is absent; its reference test is not registered ` +
        `(python3 scripts/make_reference_cases.py test/fixtures writes it)`,
    );
    continue;
  }
  Deno.test(
    `reference case llama-${name}: logits, loss, gradients, AdamW, greedy tokens and merge match transformers + PEFT`,
    () => runCase(name),
  );
}
