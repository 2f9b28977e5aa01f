/**
 * Parsing transformers' `config.json` for the decoder-only causal LMs we implement: Llama (and Mistral,
 * the same computation), Qwen2/2.5 and Qwen3. Everything the forward pass depends on is read and
 * checked; a field whose value we do not implement (another activation, a rope scaling type, sliding
 * windows, partial rotary embeddings, quantization) is a ConfigError naming the field, never silently
 * ignored.
 * @module
 */
import { ConfigError } from "../core/errors.ts";
import { GEMMA3_DEFAULTS, type Gemma3LayerType, readGemma3Fields } from "./gemma3_config.ts";

/**
 * Families of one computation each: "llama" (Llama, Mistral without a sliding window), "qwen2" (biases
 * on q, k and v only), "qwen3" (per-head RMSNorm on queries and keys, head_dim 128 unless given), "phi3"
 * (q, k, v fused in `qkv_proj`, gate and up in `gate_up_proj`, no biases), "gemma3" (Gemma 3's text model:
 * its own layers, src/models/gemma3.ts; settings in {@link LlamaConfig.gemma3}).
 */
export type ModelFamily = "llama" | "qwen2" | "qwen3" | "phi3" | "gemma3";

/** transformers' architecture names we load, with their family and the `model_type` they are saved with. */
export const ARCHITECTURE_FAMILIES: Readonly<Record<string, { family: ModelFamily; modelType: string }>> = {
  LlamaForCausalLM: { family: "llama", modelType: "llama" },
  MistralForCausalLM: { family: "llama", modelType: "mistral" },
  Qwen2ForCausalLM: { family: "qwen2", modelType: "qwen2" },
  Qwen3ForCausalLM: { family: "qwen3", modelType: "qwen3" },
  Phi3ForCausalLM: { family: "phi3", modelType: "phi3" },
  Gemma3ForCausalLM: { family: "gemma3", modelType: "gemma3_text" },
};

/** `model_type` values and the family each one computes. */
const MODEL_TYPE_FAMILIES: Readonly<Record<string, ModelFamily>> = {
  llama: "llama",
  mistral: "llama",
  qwen2: "qwen2",
  qwen3: "qwen3",
  phi3: "phi3",
  gemma3_text: "gemma3",
};

/** Every architecture name in {@link ARCHITECTURE_FAMILIES}. */
export const SUPPORTED_ARCHITECTURES: readonly string[] = Object.keys(ARCHITECTURE_FAMILIES);

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

/**
 * A parsed, validated decoder config (camelCase names of transformers' fields). The name is historical:
 * it describes every family in {@link ModelFamily}.
 */
export interface LlamaConfig {
  /** As in the file (from `model_type` when absent); PEFT helpers read it to spot causal LMs. */
  architectures: string[];
  /** `model_type`: "llama", "mistral", "qwen2" or "qwen3". */
  modelType: string;
  /** Which computation the config describes (from `model_type` and `architectures`). */
  family: ModelFamily;
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
  /**
   * q, k and v projections carry biases (Llama and Qwen3: `attention_bias`, which covers o_proj too;
   * Qwen2: always).
   */
  attentionBias: boolean;
  /** o_proj carries a bias (`attention_bias` for Llama and Qwen3; never for Qwen2). */
  attentionOutputBias: boolean;
  /** Qwen3: RMSNorm over each head's queries and keys (`q_norm`, `k_norm`) before the rotary embedding. */
  qkNorm: boolean;
  /**
   * Phi-3: queries, keys and values come from one `qkv_proj` Linear (in that order along its output)
   * and the MLP's gate and up halves from one `gate_up_proj`, as transformers' Phi3 modules are named.
   */
  fusedProjections: boolean;
  /** gate, up and down projections carry biases. */
  mlpBias: boolean;
  /** lm_head shares the embedding table. */
  tieWordEmbeddings: boolean;
  /** Dropout on attention weights in training mode. */
  attentionDropout: number;
  /** The MLP activation: SiLU (SwiGLU), or Gemma 3's tanh-approximated GELU (`hidden_activation`). */
  hiddenAct: "silu" | "gelu_pytorch_tanh";
  /** Gemma 3 only (absent otherwise): sliding-window layers, the attention scale, per-type rope. */
  gemma3?: Gemma3Settings;
  /** Beginning-of-sequence token. */
  bosTokenId: number | null;
  /** One id or several (any of them ends generation). */
  eosTokenId: number | number[] | null;
  /** Padding token. */
  padTokenId: number | null;
  /** The JSON object the config came from; saving writes it back with our changes on top. */
  source: Record<string, unknown>;
}

/** Gemma 3's own settings (transformers' `Gemma3TextConfig` fields beyond the shared ones). */
export interface Gemma3Settings {
  /** Each layer's attention: a sliding window or full causal attention. */
  layerTypes: Gemma3LayerType[];
  /** Keys a sliding layer's query sees, itself included (0 when no layer slides and none is given). */
  slidingWindow: number;
  /** Attention scores are scaled by this to the power −½ (instead of head_dim^−½). */
  queryPreAttnScalar: number;
  /** The sliding layers' rotary settings (the full layers' are {@link LlamaConfig.rope}). */
  slidingRope: RopeParameters;
}

type Json = Record<string, unknown>;

function field(obj: Json, key: string): unknown {
  return Object.hasOwn(obj, key) ? obj[key] : undefined;
}

function positiveInt(obj: Json, key: string, fallback?: number): number {
  const v = field(obj, key) ?? fallback;
  if (!Number.isInteger(v) || (v as number) < 1) {
    throw new ConfigError(`config.json: ${key} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v as number;
}

function positiveNumber(obj: Json, key: string, where = "config.json", fallback?: number): number {
  const v = field(obj, key) ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(`${where}: ${key} must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function bool(obj: Json, key: string, fallback: boolean): boolean {
  const v = field(obj, key) ?? fallback;
  if (typeof v !== "boolean") {
    throw new ConfigError(`config.json: ${key} must be true or false, got ${JSON.stringify(v)}`);
  }
  return v;
}

function tokenId(obj: Json, key: string): number | null {
  const v = field(obj, key);
  if (v === undefined || v === null) return null;
  if (!Number.isInteger(v) || (v as number) < 0) {
    throw new ConfigError(
      `config.json: ${key} must be a non-negative integer or null, got ${JSON.stringify(v)}`,
    );
  }
  return v as number;
}

function eosIds(obj: Json): number | number[] | null {
  const v = field(obj, "eos_token_id");
  if (Array.isArray(v)) {
    if (v.some((x) => !Number.isInteger(x) || x < 0)) {
      throw new ConfigError(
        `config.json: eos_token_id must hold non-negative integers, got ${JSON.stringify(v)}`,
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
      throw new ConfigError(`config.json: rope_parameters must be an object, got ${JSON.stringify(params)}`);
    }
    src = params as Json;
    where = "config.json rope_parameters";
    if (scaling !== undefined && scaling !== null) {
      throw new ConfigError(`config.json: both rope_parameters and rope_scaling are set; give one of them`);
    }
  } else if (scaling !== undefined && scaling !== null) {
    if (typeof scaling !== "object" || Array.isArray(scaling)) {
      throw new ConfigError(
        `config.json: rope_scaling must be an object or null, got ${JSON.stringify(scaling)}`,
      );
    }
    src = { ...(scaling as Json), rope_theta: field(obj, "rope_theta") ?? 10000 };
    where = "config.json rope_scaling";
  } else {
    src = { rope_type: "default", rope_theta: field(obj, "rope_theta") ?? 10000 };
    where = "config.json";
  }
  // transformers 5 keeps Phi-3's partial_rotary_factor inside rope_parameters.
  const partial = field(src, "partial_rotary_factor");
  if (partial !== undefined && partial !== null && partial !== 1) {
    throw new ConfigError(
      `${where}: partial_rotary_factor ${JSON.stringify(partial)} is not implemented (only 1)`,
    );
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

/** The family of the config: from `architectures` and `model_type`, which must agree. */
function parseFamily(obj: Json): { architectures: string[]; modelType: string; family: ModelFamily } {
  const archField = field(obj, "architectures");
  const typeField = field(obj, "model_type");
  if (typeField !== undefined && typeField !== null && typeof typeField !== "string") {
    throw new ConfigError(`config.json: model_type must be a string, got ${JSON.stringify(typeField)}`);
  }
  let architectures: unknown = archField;
  if (archField === undefined || archField === null) {
    const fromType = Object.entries(ARCHITECTURE_FAMILIES).find(([, v]) => v.modelType === typeField);
    architectures = [fromType?.[0] ?? "LlamaForCausalLM"];
  }
  if (
    !Array.isArray(architectures) || architectures.length === 0 ||
    architectures.some((a) => typeof a !== "string")
  ) {
    throw new ConfigError(
      `config.json: architectures must be a list of names, got ${JSON.stringify(architectures)}`,
    );
  }
  const names = architectures as string[];
  const unsupported = names.filter((a) => !Object.hasOwn(ARCHITECTURE_FAMILIES, a));
  if (unsupported.length > 0) {
    throw new ConfigError(
      `config.json: architectures ${JSON.stringify(unsupported)} are not supported ` +
        `(supported: ${SUPPORTED_ARCHITECTURES.join(", ")})`,
    );
  }
  const families = new Set(names.map((a) => ARCHITECTURE_FAMILIES[a].family));
  if (families.size > 1) {
    throw new ConfigError(
      `config.json: architectures ${JSON.stringify(names)} name different model families`,
    );
  }
  const family = [...families][0];
  const modelType = (typeField ?? ARCHITECTURE_FAMILIES[names[0]].modelType) as string;
  if (!Object.hasOwn(MODEL_TYPE_FAMILIES, modelType)) {
    throw new ConfigError(
      `config.json: model_type ${JSON.stringify(modelType)} is not supported ` +
        `(${Object.keys(MODEL_TYPE_FAMILIES).join(", ")})`,
    );
  }
  if (MODEL_TYPE_FAMILIES[modelType] !== family) {
    throw new ConfigError(
      `config.json: model_type ${JSON.stringify(modelType)} does not match architectures ` +
        `${JSON.stringify(names)}`,
    );
  }
  return { architectures: [...names], modelType, family };
}

/**
 * Sliding-window attention is not implemented. Llama/Mistral configs must say so with `sliding_window`
 * null; Qwen configs carry a `sliding_window` that transformers ignores unless `use_sliding_window` is
 * true. Any `layer_types` (transformers 5 writes them for Qwen) must be all "full_attention".
 */
function checkFullAttention(obj: Json, family: ModelFamily, layers: number): void {
  const useSliding = field(obj, "use_sliding_window");
  if (useSliding !== undefined && useSliding !== null && typeof useSliding !== "boolean") {
    throw new ConfigError(
      `config.json: use_sliding_window must be true or false, got ${JSON.stringify(useSliding)}`,
    );
  }
  if (useSliding === true) {
    throw new ConfigError(`config.json: use_sliding_window true is not implemented`);
  }
  const sliding = field(obj, "sliding_window");
  if ((family === "llama" || family === "phi3") && sliding !== undefined && sliding !== null) {
    throw new ConfigError(
      `config.json: sliding_window ${JSON.stringify(sliding)} is not implemented (must be null)`,
    );
  }
  const layerTypes = field(obj, "layer_types");
  if (layerTypes === undefined || layerTypes === null) return;
  if (!Array.isArray(layerTypes) || layerTypes.length !== layers) {
    throw new ConfigError(
      `config.json: layer_types must list one type for each of the ${layers} layers, got ` +
        JSON.stringify(layerTypes),
    );
  }
  const other = layerTypes.findIndex((t) => t !== "full_attention");
  if (other >= 0) {
    throw new ConfigError(
      `config.json: layer_types[${other}] ${JSON.stringify(layerTypes[other])} is not implemented ` +
        `(only "full_attention")`,
    );
  }
}

/**
 * Parses and validates a transformers `config.json` object (or its text) for any supported family
 * (Llama, Mistral, Qwen2, Qwen3; see {@link ARCHITECTURE_FAMILIES}).
 * @throws {ConfigError} naming the field that is missing, malformed or not supported
 */
export function parseLlamaConfig(input: Json | string): LlamaConfig {
  let obj: Json;
  if (typeof input === "string") {
    try {
      obj = JSON.parse(input);
    } catch (e) {
      throw new ConfigError(`config.json: config.json is not valid JSON (${(e as Error).message})`);
    }
  } else {
    obj = input;
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new ConfigError(`config.json: the config must be a JSON object, got ${JSON.stringify(obj)}`);
  }
  const { architectures, modelType, family } = parseFamily(obj);
  const hiddenAct = family === "gemma3" ? "silu" : field(obj, "hidden_act") ?? "silu"; // Gemma: below
  if (hiddenAct !== "silu") {
    throw new ConfigError(
      `config.json: hidden_act ${JSON.stringify(hiddenAct)} is not supported (only "silu")`,
    );
  }
  const numHiddenLayers = positiveInt(obj, "num_hidden_layers");
  // Gemma 3's activation, windows, scale and per-layer-type rope (src/models/gemma3_config.ts).
  const gemma = family === "gemma3" ? readGemma3Fields(obj, numHiddenLayers) : null;
  if (gemma === null) checkFullAttention(obj, family, numHiddenLayers);
  const quant = field(obj, "quantization_config");
  if (quant !== undefined && quant !== null) {
    throw new ConfigError(
      `config.json: quantization_config is set; quantized checkpoints are not supported yet`,
    );
  }
  if (family === "phi3") {
    // Phi-3's residual and embedding dropouts are not implemented; its released configs set them to 0.
    for (const key of ["resid_pdrop", "embd_pdrop"]) {
      const p = field(obj, key);
      if (p !== undefined && p !== null && p !== 0) {
        throw new ConfigError(`config.json: ${key} ${JSON.stringify(p)} is not implemented (only 0)`);
      }
    }
  }
  const partial = field(obj, "partial_rotary_factor");
  if (partial !== undefined && partial !== null && partial !== 1) {
    throw new ConfigError(
      `config.json: partial_rotary_factor ${JSON.stringify(partial)} is not implemented (only 1)`,
    );
  }
  const hiddenSize = positiveInt(obj, "hidden_size");
  const numAttentionHeads = positiveInt(obj, "num_attention_heads");
  const numKeyValueHeads = positiveInt(obj, "num_key_value_heads", numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw new ConfigError(
      `config.json: num_attention_heads ${numAttentionHeads} is not a multiple of num_key_value_heads ` +
        `${numKeyValueHeads}`,
    );
  }
  // Qwen3Config's own default is 128, Gemma3TextConfig's 256; the others derive it from the hidden size.
  const defaultHeadDim = family === "qwen3"
    ? 128
    : family === "gemma3"
    ? GEMMA3_DEFAULTS.headDim
    : hiddenSize / numAttentionHeads;
  const headDimField = field(obj, "head_dim");
  const headDim = headDimField === undefined || headDimField === null
    ? defaultHeadDim
    : positiveInt(obj, "head_dim");
  if (!Number.isInteger(headDim)) {
    throw new ConfigError(
      `config.json: hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numAttentionHeads} ` +
        `and head_dim is not given`,
    );
  }
  if (headDim % 2 !== 0) {
    throw new ConfigError(`config.json: head_dim ${headDim} must be even for rotary embeddings`);
  }
  const attentionDropout = field(obj, "attention_dropout") ?? 0;
  if (typeof attentionDropout !== "number" || !(attentionDropout >= 0 && attentionDropout < 1)) {
    throw new ConfigError(
      `config.json: attention_dropout must be in [0, 1), got ${JSON.stringify(attentionDropout)}`,
    );
  }
  // Qwen2's projections are fixed in its modeling code (q, k, v biased, o not; no MLP bias) whatever
  // the file says; Qwen3 has attention_bias but no mlp_bias.
  // Phi-3's projections have no biases in its modeling code (its config has no attention_bias).
  const attentionBias = family === "qwen2"
    ? true
    : family === "phi3"
    ? false
    : bool(obj, "attention_bias", false);
  return {
    architectures,
    modelType,
    family,
    vocabSize: positiveInt(obj, "vocab_size"),
    hiddenSize,
    intermediateSize: positiveInt(obj, "intermediate_size"),
    numHiddenLayers,
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    maxPositionEmbeddings: positiveInt(obj, "max_position_embeddings", 2048),
    rmsNormEps: positiveNumber(obj, "rms_norm_eps", "config.json", 1e-6),
    rope: gemma === null ? parseRope(obj) : parseRope({ rope_parameters: gemma.fullRope }),
    attentionBias,
    attentionOutputBias: family === "qwen2" ? false : attentionBias,
    qkNorm: family === "qwen3" || family === "gemma3",
    fusedProjections: family === "phi3",
    mlpBias: family === "llama" ? bool(obj, "mlp_bias", false) : false,
    tieWordEmbeddings: bool(
      obj,
      "tie_word_embeddings",
      family === "gemma3" && GEMMA3_DEFAULTS.tieWordEmbeddings,
    ),
    attentionDropout,
    hiddenAct: gemma === null ? "silu" : "gelu_pytorch_tanh",
    ...(gemma === null ? {} : {
      gemma3: {
        layerTypes: gemma.layerTypes,
        slidingWindow: gemma.slidingWindow,
        queryPreAttnScalar: gemma.queryPreAttnScalar,
        slidingRope: parseRope({ rope_parameters: gemma.slidingRope }),
      },
    }),
    bosTokenId: tokenId(obj, "bos_token_id"),
    eosTokenId: eosIds(obj),
    padTokenId: tokenId(obj, "pad_token_id"),
    source: structuredClone(obj),
  };
}

/** The same parser under a family-neutral name. */
export const parseModelConfig: (input: Json | string) => LlamaConfig = parseLlamaConfig;

/** Options of {@link llamaConfig}: the sizes of a model, in camelCase, for building one from scratch. */
export type LlamaConfigOptions =
  & Partial<
    Omit<
      LlamaConfig,
      | "source"
      | "rope"
      | "hiddenAct"
      | "family"
      | "attentionOutputBias"
      | "qkNorm"
      | "fusedProjections"
      | "gemma3"
    >
  >
  & {
    vocabSize: number;
    hiddenSize: number;
    intermediateSize: number;
    numHiddenLayers: number;
    numAttentionHeads: number;
    ropeTheta?: number;
  };

/**
 * A config for a new model (tests, examples), written as transformers would and parsed back. The family
 * follows `architectures` (default `["LlamaForCausalLM"]`); fields a family does not have are left out.
 */
export function llamaConfig(opts: LlamaConfigOptions): LlamaConfig {
  const architectures = opts.architectures ?? ["LlamaForCausalLM"];
  const known = ARCHITECTURE_FAMILIES[architectures[0]];
  const json: Json = {
    architectures,
    model_type: opts.modelType ?? known?.modelType ?? "llama",
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
  if (known?.family === "qwen2" || known?.family === "phi3") delete json.attention_bias;
  if (known?.family !== undefined && known.family !== "llama") delete json.mlp_bias;
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
  const extraOf = (rope: RopeParameters): Json => {
    const extra: Json = {};
    if (rope.factor !== undefined) extra.factor = rope.factor;
    if (rope.ropeType === "llama3") {
      extra.low_freq_factor = rope.lowFreqFactor;
      extra.high_freq_factor = rope.highFreqFactor;
      extra.original_max_position_embeddings = rope.originalMaxPositionEmbeddings;
    }
    return extra;
  };
  const extra = extraOf(rope);
  const legacyRope = !Object.hasOwn(out, "rope_parameters") &&
    (Object.hasOwn(out, "rope_theta") || Object.hasOwn(out, "rope_scaling"));
  const gemma = config.gemma3;
  if (legacyRope) {
    out.rope_theta = rope.theta;
    out.rope_scaling = rope.ropeType === "default" ? null : { rope_type: rope.ropeType, ...extra };
    // Gemma 3 in 4.x: the sliding layers' base beside the full layers' rope_theta / rope_scaling.
    if (gemma !== undefined) out.rope_local_base_freq = gemma.slidingRope.theta;
  } else if (gemma !== undefined) {
    const sliding = gemma.slidingRope;
    out.rope_parameters = {
      full_attention: { rope_type: rope.ropeType, rope_theta: rope.theta, ...extra },
      sliding_attention: { rope_type: sliding.ropeType, rope_theta: sliding.theta, ...extraOf(sliding) },
    };
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
    tie_word_embeddings: config.tieWordEmbeddings,
    attention_dropout: config.attentionDropout,
    hidden_act: config.hiddenAct,
    bos_token_id: config.bosTokenId,
    eos_token_id: config.eosTokenId,
    pad_token_id: config.padTokenId,
  });
  // Only the fields the family's transformers config has: Qwen2 fixes its biases in code.
  if (config.family !== "qwen2" && config.family !== "phi3") out.attention_bias = config.attentionBias;
  if (config.family === "llama") out.mlp_bias = config.mlpBias;
  if (gemma !== undefined) {
    // Gemma3TextConfig names its activation hidden_activation (and has no hidden_act).
    if (!Object.hasOwn(config.source, "hidden_act")) delete out.hidden_act;
    Object.assign(out, {
      hidden_activation: config.hiddenAct,
      layer_types: [...gemma.layerTypes],
      sliding_window: gemma.slidingWindow > 0 ? gemma.slidingWindow : null,
      query_pre_attn_scalar: gemma.queryPreAttnScalar,
    });
  }
  if (Object.hasOwn(out, "torch_dtype") && !Object.hasOwn(out, "dtype")) out.torch_dtype = dtype;
  else out.dtype = dtype;
  return out;
}
