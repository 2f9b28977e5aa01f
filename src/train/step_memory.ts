/**
 * A training step's device memory, estimated from the model's config before the step runs, so that a
 * batch too large for the device's budget (`setMemoryLimit`) is refused before any of its kernels is
 * recorded. Without it the first op past the budget would throw midway through the forward, after the
 * ops before it had been queued.
 *
 * The estimate is measured, not derived, and meant as a floor: the bytes a LoRA step (r = 16 on every
 * projection) holds at its peak beyond what was live before it, fitted over 115 random Llama-shaped
 * configs on the CPU reference (2026-12-01: hidden 32-384, 1-3 layers, vocab 32-20,000, 4-600 tokens)
 * with the peak either at the loss (the activations kept for backward plus a chunk of logits) or in the
 * backward, then taken at 0.6 of the fit, which puts it at 0.48-0.96x of each measured peak
 * (test/train/step_memory_test.ts checks 0.35-1.0x on random configs). So a step it refuses does not
 * fit, and a step it lets through may still meet an op's own budget check midway (a DeviceError too, the
 * step's tensors freed and no gradient left). The fit follows the graph the forward and backward build;
 * when they change (a kernel keeping less for backward), the test says so and the numbers need a new fit.
 * @module
 */
import type { Module } from "../nn/module.ts";
import type { AdamW } from "../optim/adamw.ts";
import { DEFAULT_CHUNK_ELEMENTS } from "../tensor/mod.ts";

/** The config fields the estimate reads (LlamaConfig's names). */
interface ShapeConfig {
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numKeyValueHeads: number;
  headDim: number;
  vocabSize: number;
}

function shapeConfigOf(model: Module): ShapeConfig | null {
  const c = (model as { config?: Partial<Record<keyof ShapeConfig, unknown>> }).config;
  if (c === null || typeof c !== "object") return null;
  const keys = [
    "hiddenSize",
    "intermediateSize",
    "numHiddenLayers",
    "numKeyValueHeads",
    "headDim",
    "vocabSize",
  ] as const;
  for (const k of keys) if (!(typeof c[k] === "number" && c[k] > 0)) return null;
  return c as ShapeConfig;
}

/** Bytes per element of the model's first parameter (its activations' dtype). */
function activationBytes(model: Module): number {
  const dt = model.parameters()[0]?.dtype;
  return dt === "f16" ? 2 : dt === "f64" ? 8 : 4;
}

/**
 * The bytes a training step of `tokens` tokens allocates beyond what is live before it (at 0.6 of the
 * measured fit, see the module's note), or null for a model without a Llama-shaped config. Includes the
 * trainable parameters' gradients and, before the optimizer's first step, its two moment buffers.
 */
export function estimateStepBytes(model: Module, optimizer: AdamW, tokens: number): number | null {
  const c = shapeConfigOf(model);
  if (c === null) return null;
  const kv = c.numKeyValueHeads * c.headDim;
  // Elements per token and layer (fitted: hidden, intermediate, K/V width, a constant), and per token
  // outside the layers.
  const perTokenLayer = 5.99 * c.hiddenSize + 2.30 * c.intermediateSize + 2.82 * kv + 27.1;
  const activations = tokens * (c.numHiddenLayers * perTokenLayer + 2.99 * c.hiddenSize) *
    activationBytes(model);
  // The loss's logits live one chunk at a time (f32).
  const logits = Math.min(tokens * c.vocabSize, DEFAULT_CHUNK_ELEMENTS) * 4;
  const peak = Math.max(activations + 1.86 * logits, 1.76 * activations);
  // The gradients and the optimizer's working buffers (fitted), and before the first optimizer step
  // the two moment buffers it allocates then.
  const trainable = optimizer.params.reduce((s, p) => s + p.size, 0);
  const fixed = 4.99 * trainable * 4;
  const moments = optimizer.state.every((s) => s === null) ? 2 * trainable * 4 : 0;
  return Math.round(0.6 * (peak + fixed) + moments);
}
