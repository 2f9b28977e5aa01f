/**
 * generate past the model's max_position_embeddings (issue 23): as transformers does for the RoPE types
 * we support (default, linear, llama3), it does not refuse; positions go on counting and RoPE rotates them
 * with the same frequencies (extrapolation), on the device loop and on the CPU reference alike.
 */
import assert from "node:assert/strict";
import { argmax, type Device, llamaConfig, LlamaForCausalLM, noGrad } from "../../mod.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";
import { cpuDevice } from "../../mod.ts";

const PROMPT = [1, 5, 9, 3, 7, 2];

function model(maxPositionEmbeddings: number, device: Device): LlamaForCausalLM {
  const config = llamaConfig({
    vocabSize: 64,
    hiddenSize: 32,
    intermediateSize: 48,
    numHiddenLayers: 2,
    numAttentionHeads: 4,
    numKeyValueHeads: 2,
    maxPositionEmbeddings,
  });
  return new LlamaForCausalLM(config, { device, seed: 7 });
}

async function pastTheEnd(device: Device): Promise<void> {
  const short = model(8, device);
  const [row] = await short.generate([PROMPT], { maxNewTokens: 14, eosTokenId: null });
  assert.equal(row.length, PROMPT.length + 14, "20 positions from a model of 8: no refusal, no early stop");
  // Positions continue: the same weights with room for every position choose the same tokens (the
  // default RoPE's frequencies do not depend on max_position_embeddings), so nothing was clamped or wrapped.
  const roomy = model(64, device);
  const [same] = await roomy.generate([PROMPT], { maxNewTokens: 14, eosTokenId: null });
  assert.deepEqual(row, same);
  // And the KV-cache steps past position 8 equal a full forward over the whole prefix.
  for (let k = PROMPT.length; k < row.length; k++) {
    const logits = await noGrad(() => short.forward([row.slice(0, k)], { lastOnly: true }).logits).data();
    assert.equal(argmax(logits), row[k], `token ${k}`);
  }
}

Deno.test("generate past max_position_embeddings: not refused; positions continue (RoPE extrapolates)", async () => {
  await pastTheEnd(cpuDevice());
});

gpuTest("generate on WebGPU past max_position_embeddings: not refused; positions continue", async (gpu) => {
  await pastTheEnd(gpu);
});
