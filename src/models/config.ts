/**
 * Parsing transformers' `config.json` for Llama-family causal LMs. Everything the forward pass depends
 * on is read and checked; a field whose value we do not implement (another activation, a rope scaling
 * type, sliding windows, quantization) is a ConfigError naming the field, never silently ignored.
 * @module
 */
import { ConfigError } from "../core/errors.ts";

/** Architectures that are exactly transformers' `LlamaForCausalLM` computation. */
export const SUPPORTED_ARCHITECTURES: readonly string[] = ["LlamaForCausalLM", "MistralForCausalLM"];

/** RoPE variants: transformers' `rope_type` values we compute. */
export type RopeType = "default" | "linear" | "llama3";

/** Rotary embedding settings (transformers' `rope_parameters`, or `rope_theta` + `rope_scaling`). */
export interface RopeParameters {
  /** transformers' `rope_type`. */
  ropeType: RopeType;
  /** Base of the frequencies (`rope_theta`). */
  theta: number;
  /** "linear" and "llama3": positions (linear) or low frequencies (llama3) are divided by it. */
  factor?: number;
  /** "llama3" only. */
  lowFreqFactor?: number;
  /** "llama3" only. */
  highFreqFactor?: number;
  /** "llama3" only: the context length the model was pre-trained with. */
  originalMaxPositionEmbeddings?: number;
}

/** A parsed, validated Llama-family config (camelCase names of transformers' fields). */
export interface LlamaConfig {
  /** As in the file (`["LlamaForCausalLM"]` when absent); PEFT helpers read it to spot causal LMs. */
  architectures: string[];
  /** `model_type`: "llama" or "mistral". */
  modelType: string;
  /** Tokens in the embedding table and the output head. */
  vocabSize: number;
  /** Width of the residual stream. */
  hiddenSize: number;
  /** Width of the SwiGLU feed-forward block. */
  intermediateSize: number;
  /** Decoder layers. */
  numHiddenLayers: number;
  /** Query heads. */
  numAttentionHeads: number;
  /** Grouped-query attention: heads share key/value heads in groups of numAttentionHeads / this. */
  numKeyValueHeads: number;
  /** Width of each attention head. */
  headDim: number;
  /** Longest context the checkpoint was trained for (informational: RoPE extends past it). */
  maxPositionEmbeddings: number;
  /** Epsilon of every RMSNorm. */
  rmsNormEps: number;
  /** Rotary embedding settings. */
  rope: RopeParameters;
  /** q, k, v and o projections carry biases. */
  attentionBias: boolean;
  /** gate, up and down projections carry biases. */
  mlpBias: boolean;
  /** lm_head shares the embedding table. */
  tieWordEmbeddings: boolean;
  /** Dropout on attention weights in training mode. */
  attentionDropout: number;
  /** The MLP activation (only SiLU is implemented). */
  hiddenAct: "silu";
  /** Beginning-of-sequence token. */
  bosTokenId: number | null;
  /** One id or several (any of them ends generation). */
  eosTokenId: number | number[] | null;
  /** Padding token. */
  padTokenId: number | null;
  /** The JSON object the config came from; saving writes it back with our changes on top. */
  source: Record<string, unknown>;
}

type Json = Record<string, unknown>;

function field(obj: Json, key: string): unknown {
  return Object.hasOwn(obj, key) ? obj[key] : undefined;
}

function positiveInt(obj: Json, key: string, fallback?: number): number {
  const v = field(obj, key) ?? fallback;
  if (!Number.isInteger(v) || (v as number) < 1) {
    throw new ConfigError(`LlamaConfig: ${key} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v as number;
}

function positiveNumber(obj: Json, key: string, where = "LlamaConfig", fallback?: number): number {
  const v = field(obj, key) ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(`${where}: ${key} must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function bool(obj: Json, key: string, fallback: boolean): boolean {
  const v = field(obj, key) ?? fallback;
  if (typeof v !== "boolean") {
    throw new ConfigError(`LlamaConfig: ${key} must be true or false, got ${JSON.stringify(v)}`);
  }
  return v;
}

function tokenId(obj: Json, key: string): number | null {
  const v = field(obj, key);
  if (v === undefined || v === null) return null;
  if (!Number.isInteger(v) || (v as number) < 0) {
    throw new ConfigError(
      `LlamaConfig: ${key} must be a non-negative integer or null, got ${JSON.stringify(v)}`,
    );
  }
  return v as number;
}

function eosIds(obj: Json): number | number[] | null {
  const v = field(obj, "eos_token_id");
  if (Array.isArray(v)) {
    if (v.some((x) => !Number.isInteger(x) || x < 0)) {
      throw new ConfigError(
        `LlamaConfig: eos_token_id must hold non-negative integers, got ${JSON.stringify(v)}`,
      );
    }
    return [...v];
  }
  return tokenId(obj, "eos_token_id");
}

/** Reads the rope settings from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x). */
function parseRope(obj: Json): RopeParameters {
  const params = field(obj, "rope_parameters");
  const scaling = field(obj, "rope_scaling");
  let src: Json;
  let where: string;
  if (params !== undefined && params !== null) {
    if (typeof params !== "object" || Array.isArray(params)) {
      throw new ConfigError(`LlamaConfig: rope_parameters must be an object, got ${JSON.stringify(params)}`);
    }
    src = params as Json;
    where = "LlamaConfig.rope_parameters";
    if (scaling !== undefined && scaling !== null) {
      throw new ConfigError(`LlamaConfig: both rope_parameters and rope_scaling are set; give one of them`);
    }
  } else if (scaling !== undefined && scaling !== null) {
    if (typeof scaling !== "object" || Array.isArray(scaling)) {
      throw new ConfigError(
        `LlamaConfig: rope_scaling must be an object or null, got ${JSON.stringify(scaling)}`,
      );
    }
    src = { ...(scaling as Json), rope_theta: field(obj, "rope_theta") ?? 10000 };
    where = "LlamaConfig.rope_scaling";
  } else {
    src = { rope_type: "default", rope_theta: field(obj, "rope_theta") ?? 10000 };
    where = "LlamaConfig";
  }
  const type = field(src, "rope_type") ?? field(src, "type") ?? "default";
  const theta = positiveNumber(src, "rope_theta", where, 10000);
  if (type === "default") return { ropeType: "default", theta };
  if (type === "linear") return { ropeType: "linear", theta, factor: positiveNumber(src, "factor", where) };
  if (type === "llama3") {
    const rope: RopeParameters = {
      ropeType: "llama3",
      theta,
      factor: positiveNumber(src, "factor", where),
      lowFreqFactor: positiveNumber(src, "low_freq_factor", where),
      highFreqFactor: positiveNumber(src, "high_freq_factor", where),
      originalMaxPositionEmbeddings: positiveNumber(src, "original_max_position_embeddings", where),
    };
    if (rope.highFreqFactor! <= rope.lowFreqFactor!) {
      throw new ConfigError(`${where}: high_freq_factor must exceed low_freq_factor for rope_type "llama3"`);
    }
    return rope;
  }
  throw new ConfigError(
    `${where}: rope_type ${
      JSON.stringify(type)
    } is not implemented (supported: "default", "linear", "llama3")`,
  );
}

/**
 * Parses and validates a transformers `config.json` object (or its text) for a Llama-family model.
 * @throws {ConfigError} naming the field that is missing, malformed or not supported
 */
export function parseLlamaConfig(input: Json | string): LlamaConfig {
  let obj: Json;
  if (typeof input === "string") {
    try {
      obj = JSON.parse(input);
    } catch (e) {
      throw new ConfigError(`LlamaConfig: config.json is not valid JSON (${(e as Error).message})`);
    }
  } else {
    obj = input;
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new ConfigError(`LlamaConfig: the config must be a JSON object, got ${JSON.stringify(obj)}`);
  }
  const archField = field(obj, "architectures");
  const architectures = archField === undefined || archField === null ? ["LlamaForCausalLM"] : archField;
  if (
    !Array.isArray(architectures) || architectures.length === 0 ||
    architectures.some((a) => typeof a !== "string")
  ) {
    throw new ConfigError(
      `LlamaConfig: architectures must be a list of names, got ${JSON.stringify(architectures)}`,
    );
  }
  const unsupported = (architectures as string[]).filter((a) => !SUPPORTED_ARCHITECTURES.includes(a));
  if (unsupported.length > 0) {
    throw new ConfigError(
      `LlamaConfig: architectures ${JSON.stringify(unsupported)} are not supported ` +
        `(supported: ${SUPPORTED_ARCHITECTURES.join(", ")})`,
    );
  }
  const modelType = field(obj, "model_type") ?? "llama";
  if (modelType !== "llama" && modelType !== "mistral") {
    throw new ConfigError(
      `LlamaConfig: model_type ${JSON.stringify(modelType)} is not supported (llama, mistral)`,
    );
  }
  const hiddenAct = field(obj, "hidden_act") ?? "silu";
  if (hiddenAct !== "silu") {
    throw new ConfigError(
      `LlamaConfig: hidden_act ${JSON.stringify(hiddenAct)} is not supported (only "silu")`,
    );
  }
  const sliding = field(obj, "sliding_window");
  if (sliding !== undefined && sliding !== null) {
    throw new ConfigError(
      `LlamaConfig: sliding_window ${JSON.stringify(sliding)} is not implemented (must be null)`,
    );
  }
  if (field(obj, "use_sliding_window") === true) {
    throw new ConfigError(`LlamaConfig: use_sliding_window true is not implemented`);
  }
  const quant = field(obj, "quantization_config");
  if (quant !== undefined && quant !== null) {
    throw new ConfigError(
      `LlamaConfig: quantization_config is set; quantized checkpoints are not supported yet`,
    );
  }
  const hiddenSize = positiveInt(obj, "hidden_size");
  const numAttentionHeads = positiveInt(obj, "num_attention_heads");
  const numKeyValueHeads = positiveInt(obj, "num_key_value_heads", numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw new ConfigError(
      `LlamaConfig: num_attention_heads ${numAttentionHeads} is not a multiple of num_key_value_heads ` +
        `${numKeyValueHeads}`,
    );
  }
  const defaultHeadDim = hiddenSize / numAttentionHeads;
  const headDimField = field(obj, "head_dim");
  const headDim = headDimField === undefined || headDimField === null
    ? defaultHeadDim
    : positiveInt(obj, "head_dim");
  if (!Number.isInteger(headDim)) {
    throw new ConfigError(
      `LlamaConfig: hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numAttentionHeads} ` +
        `and head_dim is not given`,
    );
  }
  if (headDim % 2 !== 0) {
    throw new ConfigError(`LlamaConfig: head_dim ${headDim} must be even for rotary embeddings`);
  }
  const attentionDropout = field(obj, "attention_dropout") ?? 0;
  if (typeof attentionDropout !== "number" || !(attentionDropout >= 0 && attentionDropout < 1)) {
    throw new ConfigError(
      `LlamaConfig: attention_dropout must be in [0, 1), got ${JSON.stringify(attentionDropout)}`,
    );
  }
  return {
    architectures: [...(architectures as string[])],
    modelType: modelType as string,
    vocabSize: positiveInt(obj, "vocab_size"),
    hiddenSize,
    intermediateSize: positiveInt(obj, "intermediate_size"),
    numHiddenLayers: positiveInt(obj, "num_hidden_layers"),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    maxPositionEmbeddings: positiveInt(obj, "max_position_embeddings", 2048),
    rmsNormEps: positiveNumber(obj, "rms_norm_eps", "LlamaConfig", 1e-6),
    rope: parseRope(obj),
    attentionBias: bool(obj, "attention_bias", false),
    mlpBias: bool(obj, "mlp_bias", false),
    tieWordEmbeddings: bool(obj, "tie_word_embeddings", false),
    attentionDropout,
    hiddenAct: "silu",
    bosTokenId: tokenId(obj, "bos_token_id"),
    eosTokenId: eosIds(obj),
    padTokenId: tokenId(obj, "pad_token_id"),
    source: structuredClone(obj),
  };
}

/** Options of {@link llamaConfig}: the sizes of a model, in camelCase, for building one from scratch. */
export type LlamaConfigOptions = Partial<Omit<LlamaConfig, "source" | "rope" | "hiddenAct">> & {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  ropeTheta?: number;
};

/** A config for a new model (tests, examples), written as transformers would and parsed back. */
export function llamaConfig(opts: LlamaConfigOptions): LlamaConfig {
  const json: Json = {
    architectures: opts.architectures ?? ["LlamaForCausalLM"],
    model_type: "llama",
    vocab_size: opts.vocabSize,
    hidden_size: opts.hiddenSize,
    intermediate_size: opts.intermediateSize,
    num_hidden_layers: opts.numHiddenLayers,
    num_attention_heads: opts.numAttentionHeads,
    num_key_value_heads: opts.numKeyValueHeads ?? opts.numAttentionHeads,
    head_dim: opts.headDim ?? opts.hiddenSize / opts.numAttentionHeads,
    max_position_embeddings: opts.maxPositionEmbeddings ?? 2048,
    rms_norm_eps: opts.rmsNormEps ?? 1e-6,
    rope_parameters: { rope_type: "default", rope_theta: opts.ropeTheta ?? 10000 },
    attention_bias: opts.attentionBias ?? false,
    mlp_bias: opts.mlpBias ?? false,
    tie_word_embeddings: opts.tieWordEmbeddings ?? false,
    attention_dropout: opts.attentionDropout ?? 0,
    hidden_act: "silu",
    bos_token_id: opts.bosTokenId ?? null,
    eos_token_id: opts.eosTokenId ?? null,
    pad_token_id: opts.padTokenId ?? null,
  };
  return parseLlamaConfig(json);
}

/**
 * The config as transformers' `config.json`: the source object with every parsed field written back
 * (so edits to the parsed config are saved) and the dtype set to what the weights are stored as. RoPE
 * and dtype keep the spelling of the source (`rope_parameters` and `dtype` as transformers 5 writes them,
 * `rope_theta` / `rope_scaling` and `torch_dtype` as 4.x did) so the version that wrote it reads it back.
 */
export function llamaConfigToJson(config: LlamaConfig, dtype: "float32" | "float16" | "bfloat16"): Json {
  const out: Json = { ...config.source };
  const rope = config.rope;
  const extra: Json = {};
  if (rope.factor !== undefined) extra.factor = rope.factor;
  if (rope.ropeType === "llama3") {
    extra.low_freq_factor = rope.lowFreqFactor;
    extra.high_freq_factor = rope.highFreqFactor;
    extra.original_max_position_embeddings = rope.originalMaxPositionEmbeddings;
  }
  const legacyRope = !Object.hasOwn(out, "rope_parameters") &&
    (Object.hasOwn(out, "rope_theta") || Object.hasOwn(out, "rope_scaling"));
  if (legacyRope) {
    out.rope_theta = rope.theta;
    out.rope_scaling = rope.ropeType === "default" ? null : { rope_type: rope.ropeType, ...extra };
  } else {
    out.rope_parameters = { rope_type: rope.ropeType, rope_theta: rope.theta, ...extra };
  }
  Object.assign(out, {
    architectures: [...config.architectures],
    model_type: config.modelType,
    vocab_size: config.vocabSize,
    hidden_size: config.hiddenSize,
    intermediate_size: config.intermediateSize,
    num_hidden_layers: config.numHiddenLayers,
    num_attention_heads: config.numAttentionHeads,
    num_key_value_heads: config.numKeyValueHeads,
    head_dim: config.headDim,
    max_position_embeddings: config.maxPositionEmbeddings,
    rms_norm_eps: config.rmsNormEps,
    attention_bias: config.attentionBias,
    mlp_bias: config.mlpBias,
    tie_word_embeddings: config.tieWordEmbeddings,
    attention_dropout: config.attentionDropout,
    hidden_act: config.hiddenAct,
    bos_token_id: config.bosTokenId,
    eos_token_id: config.eosTokenId,
    pad_token_id: config.padTokenId,
  });
  if (Object.hasOwn(out, "torch_dtype") && !Object.hasOwn(out, "dtype")) out.torch_dtype = dtype;
  else out.dtype = dtype;
  return out;
}
