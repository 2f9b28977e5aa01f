/**
 * The tensor layer's entry: the Tensor class with its op methods installed, the functional ops, and
 * reverse-mode autograd. Code outside src/tensor imports the layer through this file only (the import
 * test checks it), which is what guarantees the methods are on the prototype wherever a Tensor is used.
 * Names marked `@internal` are for the layers above (nn, peft, models), not for mod.ts.
 * @module
 */
import "./methods.ts";

export {
  allocating,
  checkShape,
  fromStorage,
  full,
  ones,
  rand,
  randn,
  type RandomOptions,
  shapeSize,
  Tensor,
  tensor,
  type TensorOptions,
  zeros,
} from "./tensor.ts";
export * from "./ops.ts";
export { causalAttention, type CausalAttentionOptions } from "./attention.ts";
export {
  DEFAULT_CHUNK_ELEMENTS,
  linearCrossEntropy,
  type LinearCrossEntropyOptions,
  lossTile,
} from "./fused_loss.ts";
/** @internal fused decoder pieces for the models (src/models/llama.ts) and their composed twins. */
export {
  fusedRmsNorm,
  leanRmsNorm,
  leanSiluMul,
  rotaryEmbedding,
  rotaryHeads,
  siluMul,
} from "./fused_layers.ts";
export {
  type BackwardOps,
  disposeGraph,
  type GradNode,
  type GraphTensor,
  isGradEnabled,
  keep,
  noGrad,
  tidy,
} from "./graph.ts";
export type { TensorMethodName } from "./methods.ts";
