/** Small random Llama models and temporary directories shared by the model, optimizer and training tests. */
import { cpuDevice, llamaConfig, type LlamaConfigOptions, LlamaForCausalLM } from "../../mod.ts";

/** A 2-layer model with grouped-query attention (4 heads, 2 key/value heads), vocabulary 64. */
export function tinyModel(overrides: Partial<LlamaConfigOptions> = {}, seed = 7): LlamaForCausalLM {
  const config = llamaConfig({
    vocabSize: 64,
    hiddenSize: 32,
    intermediateSize: 48,
    numHiddenLayers: 2,
    numAttentionHeads: 4,
    numKeyValueHeads: 2,
    rmsNormEps: 1e-5,
    ...overrides,
  });
  return new LlamaForCausalLM(config, { device: cpuDevice(), seed });
}

/** Deterministic token rows in [0, vocab). */
export function tokenRows(rows: number, len: number, vocab = 64, salt = 1): number[][] {
  return Array.from(
    { length: rows },
    (_, r) => Array.from({ length: len }, (_, i) => (i * 17 + r * 29 + salt * 7) % vocab),
  );
}

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "lora-models-test-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
