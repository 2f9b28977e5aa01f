/**
 * A tied embedding larger than one storage binding (src/backend/webgpu/blocks.ts), on the software
 * adapter with the library's binding limit lowered to 48 KiB: the tiny Llama's 256 x 64 f32 table
 * (64 KiB) loads split into row blocks; its logits (the tied head's product) and its LoRA training step
 * (embedding gather, the tied head in the fused loss, their gradients) equal the same model loaded whole:
 * logits, loss, LoRA gradients and the embedding's gradient within 1e-6.
 */
import assert from "node:assert/strict";
import { getPeftModel, LlamaForCausalLM, LoraConfig, type Tensor } from "../../mod.ts";
import { type RawTensorEntry, readSafetensors, writeSafetensors } from "../../src/io/safetensors.ts";
import type { GpuStorage } from "../../src/backend/webgpu/backend.ts";
import { fixture, relErr } from "../helpers.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";
import { withBindingLimit } from "../backend/webgpu/binding_limit.ts";
import { tokenRows } from "./tiny_model.ts";

const CONFIG = {
  ...JSON.parse(new TextDecoder().decode(fixture("llama-tiny-lora/base/config.json"))),
  tie_word_embeddings: true,
};
/** The fixture without its separate head: a tied checkpoint. */
const TIED = (() => {
  const out: Record<string, RawTensorEntry> = {};
  for (const [k, t] of readSafetensors(fixture("llama-tiny-lora/base/model.safetensors")).tensors) {
    if (k !== "lm_head.weight") out[k] = { dtype: "BF16", shape: t.shape, data: t.data as Float32Array };
  }
  return writeSafetensors(out);
})();
const IDS = tokenRows(2, 7, 256);

/** One training step's loss and gradients (LoRA on q and v, the embedding trained too), as host arrays. */
async function step(model: LlamaForCausalLM): Promise<Map<string, Float32Array>> {
  const pm = getPeftModel(model, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ["q_proj", "v_proj"] }));
  // The same adapter values in both models (their random init differs); B nonzero gives A a gradient.
  for (const [name, p] of model.namedParameters()) {
    if (name.includes("lora_A")) p._assign(p.mul(0).add(0.02));
    if (name.includes("lora_B")) p._assign(p.mul(0).add(0.01));
  }
  const embed: Tensor = model.model.embed_tokens.weight;
  embed.requiresGrad = true;
  const { loss } = pm.forward(IDS, { labels: IDS });
  loss!.backward();
  const out = new Map<string, Float32Array>([["loss", (await loss!.data()) as Float32Array]]);
  for (const [name, p] of model.namedParameters()) {
    if (p.grad !== null) out.set(name, (await p.grad.data()) as Float32Array);
  }
  return out;
}

gpuTest(
  "a tied embedding split across buffers trains like the whole one (loss, LoRA and embedding grads)",
  async (dev) => {
    const whole = await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: TIED }, { device: dev });
    assert.equal((whole.model.embed_tokens.weight.storage() as GpuStorage).blocks, null);
    const wantLogits = (await whole.forward(IDS).logits.data()) as Float32Array;
    const want = await step(whole.train());
    await withBindingLimit(dev, 48 * 1024, async () => {
      const split = await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: TIED }, { device: dev });
      const blocks = (split.model.embed_tokens.weight.storage() as GpuStorage).blocks;
      assert.ok(blocks !== null && blocks.length === 2, "64 KiB in blocks of 192 and 64 rows");
      assert.equal(split.lm_head.weight, split.model.embed_tokens.weight, "the head is the split table");
      // The logits without labels: the tied head's product block by block.
      const logits = (await split.forward(IDS).logits.data()) as Float32Array;
      assert.ok(relErr(logits, wantLogits) <= 1e-6, `logits: relative error ${relErr(logits, wantLogits)}`);
      const got = await step(split.train());
      assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
      assert.ok(
        got.has("base_model.model.model.embed_tokens.weight") ||
          [...got.keys()].some((k) => k.endsWith("embed_tokens.weight")),
      );
      for (const [k, w] of want) {
        const err = relErr(got.get(k)!, w);
        assert.ok(err <= 1e-6, `${k}: relative error ${err}`);
      }
    });
  },
);
