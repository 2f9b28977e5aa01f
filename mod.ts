/**
 * lora-webgpu: LoRA fine-tuning and inference for JavaScript runtimes, with its own tensors and
 * autograd, WebGPU kernels verified against a CPU reference, and Hugging Face PEFT adapter interop.
 *
 * ```ts
 * import { Linear, PeftConfig, applyLoraToLinearModules, randn, Module } from "./mod.ts";
 * const model = new Module();
 * model.q_proj = new Linear(16, 16);
 * applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["q_proj"], dim: 4 }));
 * ```
 * @module
 */
export {
  AutogradError,
  ConfigError,
  DeviceError,
  DTypeError,
  FormatError,
  LoraError,
  ShapeError,
} from "./src/core/errors.ts";
export type { DType } from "./src/core/dtype.ts";
export { cpuDevice, Device, setDefaultDevice } from "./src/backend/device.ts";
export type { Backend } from "./src/backend/backend.ts";
export type { MemoryStats } from "./src/backend/backend.ts";
export { profile, type ProfileOptions, type ProfileResult, type ProfileRow } from "./src/backend/profile.ts";
export {
  full,
  ones,
  rand,
  randn,
  type RandomOptions,
  Tensor,
  tensor,
  type TensorOptions,
  zeros,
} from "./src/tensor/mod.ts";
export { manualSeed } from "./src/core/random.ts";
export { disposeGraph, keep, noGrad, tidy } from "./src/tensor/mod.ts";
export {
  add,
  broadcastTo,
  cast,
  causalAttention,
  type CausalAttentionOptions,
  concat,
  cos,
  crossEntropy,
  detach,
  div,
  dropout,
  embedding,
  exp,
  linear,
  linearCrossEntropy,
  type LinearCrossEntropyOptions,
  log,
  logSoftmax,
  matmul,
  maximum,
  mean,
  mul,
  neg,
  permute,
  relu,
  reshape,
  rmsNorm,
  rsqrt,
  scale,
  sigmoid,
  silu,
  sin,
  slice,
  softmax,
  sqrt,
  square,
  sub,
  sum,
  transpose,
} from "./src/tensor/mod.ts";
export { Module, type StateValue } from "./src/nn/module.ts";
export {
  Dropout,
  Embedding,
  Linear,
  type LinearOptions,
  type LinearQuantization,
  RMSNorm,
} from "./src/nn/layers.ts";
export {
  dequantizeLinear,
  quantizeLinear,
  quantizeModel,
  type QuantizeModelOptions,
  type QuantizeOptions,
} from "./src/nn/quantize.ts";
export { NF4_VALUES, type QuantScheme } from "./src/backend/kernels/quantize.ts";
export {
  type DropoutPosition,
  type LoraAInit,
  PeftConfig,
  type PeftConfigOptions,
} from "./src/peft/nemo_config.ts";
export { ModuleMatcher, wildcardMatch } from "./src/peft/matcher.ts";
export {
  isLoraLinear,
  LinearLoRA,
  type LinearLoRAOptions,
  patchLinearModule,
} from "./src/peft/lora_linear.ts";
export { loraLinear } from "./src/peft/lora_function.ts";
export { applyLoraToLinearModules, mergeAndUnload } from "./src/peft/apply.ts";
export {
  type AdapterFiles,
  type AdapterFilesInput,
  adapterToFiles,
  adapterToFilesAsync,
  loadAdapter,
  type LoadAdapterOptions,
  saveAdapter,
  type SaveAdapterOptions,
} from "./src/peft/adapter.ts";
export { LoraConfig, type LoraConfigOptions } from "./src/peft/lora_config.ts";
export {
  type AddWeightedAdapterOptions,
  BASE_ADAPTER_NAME,
  getPeftModel,
  type GetPeftModelOptions,
  type PeftBaseModel,
  type PeftForwardOptions,
  type PeftFromPretrainedOptions,
  type PeftLoadAdapterOptions,
  PeftModel,
  type PeftSaveOptions,
  type SetAdapterOptions,
} from "./src/peft/peft_model.ts";
export type { CombinationType } from "./src/peft/weighted.ts";
export type { PeftInitLoraWeights } from "./src/peft/lora_linear.ts";
export {
  defaultDevice,
  isSoftwareAdapter,
  webgpuDevice,
  type WebGpuDeviceOptions,
} from "./src/backend/webgpu/device.ts";
export {
  type LlamaConfig,
  llamaConfig,
  type LlamaConfigOptions,
  type ModelFamily,
  parseLlamaConfig,
  parseModelConfig,
  type RopeParameters,
  SUPPORTED_ARCHITECTURES,
} from "./src/models/config.ts";
export {
  type CausalLMOutput,
  LlamaForCausalLM,
  type LlamaForwardOptions,
  type LlamaModelOptions,
  type TokenInput,
} from "./src/models/llama.ts";
export { argmax, type GenerateOptions, KVCache, sampleToken } from "./src/models/generate.ts";
export {
  Gemma3ForCausalLM,
  MistralForCausalLM,
  Phi3ForCausalLM,
  Qwen2ForCausalLM,
  Qwen3ForCausalLM,
} from "./src/models/families.ts";
export { type AutoCausalLM, AutoModelForCausalLM, type FromConfigOptions } from "./src/models/auto.ts";
export {
  type GenerationConfig,
  type ModelSourceWithGeneration,
  parseGenerationConfig,
} from "./src/models/generation_config.ts";
export { type ModelSource, modelToFiles, saveModel, type SaveModelOptions } from "./src/models/weights.ts";
export { ropeInverseFrequencies } from "./src/models/rope.ts";
export {
  AutoTokenizer,
  type ChatMessage,
  type ChatTemplateOptions,
  type DecodeOptions,
  type EncodeOptions,
  PreTrainedTokenizer,
  type TokenizerSource,
} from "./src/tokenizers/tokenizer.ts";
export {
  generateText,
  type GenerateTextOptions,
  type GenerationTokenizer,
  type TextGenerator,
  type TextPrompt,
} from "./src/text/generate_text.ts";
export {
  collateCompletions,
  type CollateOptions,
  type CollateTokenizer,
  type CompletionBatch,
  IGNORE_INDEX,
  type PromptCompletion,
} from "./src/text/collate.ts";
export { AdamW, type AdamWOptions, type AdamWStateDict } from "./src/optim/adamw.ts";
export { clipGradNorm } from "./src/optim/clip.ts";
export { warmupCosineFactor, type WarmupCosineOptions, WarmupCosineSchedule } from "./src/optim/schedule.ts";
export { loadCheckpoint, saveCheckpoint, type TrainerState } from "./src/train/checkpoint.ts";
export {
  train,
  type TrainBatch,
  type TrainOptions,
  type TrainProgress,
  type TrainResult,
} from "./src/train/loop.ts";
export {
  formatProgress,
  type ProgressFigures,
  ProgressLine,
  type ProgressLineOptions,
  standardErrorOutput,
} from "./src/train/progress.ts";
export {
  readSafetensors,
  type SafetensorsFile,
  type SafetensorsTensor,
  writeSafetensors,
} from "./src/io/safetensors.ts";
