/**
 * transformers' `LlamaForCausalLM` (also Mistral-style and SmolLM checkpoints) on the public tensor ops,
 * so it runs on every device. Module names are exactly transformers' (`model.layers.0.self_attn.q_proj`,
 * ...), so checkpoint and PEFT adapter keys map one to one.
 *
 * Attention is the fused, memory-efficient `causalAttention` (nothing [seq, keys]-sized is built or kept;
 * masks are computed on the device from the [batch, keys] padding mask), equal to transformers' eager
 * path, which is kept (`attnImplementation = "eager"`, and attention dropout in training): scores =
 * q kᵀ · head_dim^-½ plus an additive mask holding the dtype's most negative finite value (never −∞, so
 * a fully masked row stays finite), softmax in float32, then · v. Grouped-query attention runs without
 * repeating keys in both. With labels the loss is the fused `linearCrossEntropy`, which never holds the
 * whole logits; `logits` is then computed on first access.
 * @module
 */
import { Module } from "../nn/module.ts";
import { Embedding, Linear, RMSNorm } from "../nn/layers.ts";
import { checkQuantizeOptions, quantizeModel, type QuantizeModelOptions } from "../nn/quantize.ts";
import {
  add,
  cast,
  causalAttention,
  crossEntropy,
  dropout,
  fusedRmsNorm,
  keep,
  linearCrossEntropy,
  matmul,
  mean,
  mul,
  noGrad,
  permute,
  reshape,
  rotaryHeads,
  rsqrt,
  silu,
  siluMul,
  slice,
  softmax,
  square,
  type Tensor,
  tensor,
  tidy,
  toIndices,
  transpose,
} from "../tensor/mod.ts";
import { nextSeed } from "../core/random.ts";
import { currentDevice, Device } from "../backend/device.ts";
import { type DType, isDType } from "../core/dtype.ts";
import { type LlamaConfig, type ModelFamily, parseLlamaConfig } from "./config.ts";
import {
  defaultEosTokenId,
  type GenerationConfig,
  type ModelSourceWithGeneration,
  readGenerationConfig,
} from "./generation_config.ts";
import { RopeTables, rotateHalfMatrix } from "./rope.ts";
import { type GenerateOptions, generateTokens, type KVCache } from "./generate.ts";
import { loadLlamaWeights, type ModelSource, saveModel, type SaveModelOptions } from "./weights.ts";
import { ConfigError, DeviceError, DTypeError, ShapeError } from "../core/errors.ts";
import { checkOptionalBoolean, checkOptionalSeed, checkOptionKeys, showValue } from "../core/options.ts";

/** Token ids (or labels, masks, positions): rows of equal length, or flat data with a [batch, seq] shape. */
export type TokenInput = number[][] | { data: ArrayLike<number>; shape: readonly number[] };

/** Options of {@link LlamaForCausalLM.forward}. */
export interface LlamaForwardOptions {
  /** Targets for transformers' causal-LM loss, [batch, seq]; −100 marks positions to ignore. */
  labels?: TokenInput;
  /** 1 for real tokens, 0 for padding, [batch, seq] (or [batch, past + seq] with a cache). */
  attentionMask?: TokenInput;
  /** Rotary positions, [batch, seq]; default past, past + 1, ... for every row (as transformers). */
  positionIds?: TokenInput;
  /** Keys and values of earlier positions; this call appends its own (generate uses it). */
  cache?: KVCache;
  /** Compute logits for the last position only (generation's prefill). */
  lastOnly?: boolean;
}

/** What {@link LlamaForCausalLM.forward} returns. */
export interface CausalLMOutput {
  /**
   * [batch, seq, vocab] ([batch, 1, vocab] with `lastOnly`). With labels and the fused loss, a getter
   * (not enumerable) that makes them on first access: read them while the forward's tensors are alive.
   */
  logits: Tensor;
  /** Mean cross-entropy of the shifted labels, a 0-d tensor; null without labels. */
  loss: Tensor | null;
}

/** Options of the constructor and of {@link LlamaForCausalLM.fromPretrained}. */
export interface LlamaModelOptions {
  /** Where parameters live (default: the default device). */
  device?: Device;
  /** Parameter and compute dtype (default f32); checkpoint weights are converted to it. */
  dtype?: DType;
  /** false: shape-only weights, to be loaded (what fromPretrained does); default: random init. */
  materialize?: boolean;
  /** Seed of the random init. */
  seed?: number;
  /**
   * fromPretrained only: quantize every Linear but lm_head (quantizeModel) once the weights are loaded,
   * e.g. `{ scheme: "nf4" }` for a QLoRA base; the dense weights are freed.
   */
  quantize?: QuantizeModelOptions;
}

/**
 * Checks {@link LlamaModelOptions} before anything is built or read, naming `where` and the option: a
 * bad device or dtype would otherwise surface deep inside the first layer (or after reading a
 * multi-gigabyte checkpoint) as an error of some tensor constructor.
 */
function checkModelOptions(options: unknown, where: string): LlamaModelOptions {
  const keys = ["device", "dtype", "materialize", "seed", "quantize"];
  const o = checkOptionKeys(options, keys, where) as LlamaModelOptions;
  if (o.device !== undefined && !(o.device instanceof Device)) {
    throw new DeviceError(
      `${where}: device must be a Device (e.g. await webgpuDevice()), got ${showValue(o.device)}`,
    );
  }
  if (o.dtype !== undefined) {
    if (!isDType(o.dtype)) {
      throw new DTypeError(`${where}: dtype must be "f32", "f16" or "f64", got ${showValue(o.dtype)}`);
    }
    (o.device ?? currentDevice()).checkDType(o.dtype, where);
  }
  checkOptionalBoolean(o.materialize, "materialize", where);
  checkOptionalSeed(o.seed, "seed", where);
  if (o.quantize !== undefined) checkQuantizeOptions(o.quantize, `${where}: quantize`, ["exclude"]);
  return o;
}

/** Per-forward tensors every layer shares (exported for families with their own layers: gemma3.ts). */
export interface LayerContext {
  /** Rotary positions of the new tokens, [posBatch, seq] row-major (the cos/sin tables' rows). */
  positions: Int32Array;
  /** 1 when every row shares `positions`, else batch. */
  posBatch: number;
  cos: Tensor;
  sin: Tensor;
  rot: Tensor;
  /** Additive mask [batch or 1, 1, 1, seq, keys] of the eager path, or null (nothing masked, or fused). */
  mask: Tensor | null;
  /**
   * Whether attention runs fused (`causalAttention`) rather than eager, and the norms, SwiGLU product and
   * rotary embedding as their memory-lean ops (src/tensor/fused_layers.ts) rather than composed.
   */
  fused: boolean;
  /** The padding mask [batch, keys] for the fused attention, or null when every key is real. */
  keyMask: Int32Array | null;
  cache: KVCache | null;
}

/** The most negative finite value of a dtype: transformers' `torch.finfo(dtype).min` mask value. */
export function maskValue(dtype: DType): number {
  return dtype === "f64" ? -Number.MAX_VALUE : dtype === "f16" ? -65504 : -3.4028234663852886e38;
}

/** Softmax and its mask run in f32 for f16 models, as transformers upcasts attention weights. */
export function computeDType(dtype: DType): DType {
  return dtype === "f16" ? "f32" : dtype;
}

/** RMSNorm that, like transformers' LlamaRMSNorm, normalises in float32 and casts back before the scale. */
export class LlamaRMSNorm extends RMSNorm {
  /**
   * The fused kernel `fusedRmsNorm` (`lean`, the default; statistics in f32 for every dtype) or the
   * composed path: RMSNorm's for f32 and f64, in f32 and cast back for f16.
   */
  override forward(x: Tensor, lean = true): Tensor {
    if (lean && this.weight.dtype === x.dtype) return fusedRmsNorm(x, this.weight, this.eps);
    if (x.dtype !== "f16") return super.forward(x);
    const x32 = cast(x, "f32");
    const normed = mul(x32, rsqrt(add(mean(square(x32), -1, true), this.eps)));
    return mul(this.weight, cast(normed, x.dtype));
  }
}

/**
 * Multi-head attention with rotary embeddings and grouped key/value heads. The family's options come
 * from the config: which projections carry biases (Qwen2: q, k and v only) and Qwen3's per-head
 * RMSNorm of queries and keys (`q_norm`, `k_norm`, applied before the rotary embedding).
 */
export class LlamaAttention extends Module {
  /** Query projection [heads·headDim, hidden] (not present with fused projections: Phi-3's qkv_proj). */
  q_proj!: Linear;
  /** Key projection [kvHeads·headDim, hidden] (not present with fused projections). */
  k_proj!: Linear;
  /** Value projection [kvHeads·headDim, hidden] (not present with fused projections). */
  v_proj!: Linear;
  /** Phi-3: queries, keys and values in one projection [(heads + 2·kvHeads)·headDim, hidden]. */
  qkv_proj?: Linear;
  /** Output projection [hidden, heads·headDim]. */
  o_proj: Linear;
  /** Qwen3: RMSNorm over each query head [headDim]; absent otherwise. */
  q_norm?: LlamaRMSNorm;
  /** Qwen3: RMSNorm over each key head [headDim]; absent otherwise. */
  k_norm?: LlamaRMSNorm;
  /** Position of this layer (its slot in a KV cache). */
  readonly layerIndex: number;
  /** Query heads. */
  readonly numHeads: number;
  /** Key/value heads. */
  readonly numKeyValueHeads: number;
  /** Width of each head. */
  readonly headDim: number;
  /** Attention-weight dropout in training mode. */
  readonly dropoutP: number;

  /** The attention block of layer `layerIndex`. */
  constructor(config: LlamaConfig, layerIndex: number, opts: LlamaModelOptions = {}) {
    super();
    const { hiddenSize, numAttentionHeads: h, numKeyValueHeads: kv, headDim: d } = config;
    const lin = (inF: number, outF: number, seed: number, bias: boolean) =>
      new Linear(inF, outF, { ...opts, bias, seed });
    const seed = (opts.seed ?? 0) + 1000 * layerIndex;
    if (config.fusedProjections) {
      this.qkv_proj = lin(hiddenSize, (h + 2 * kv) * d, seed + 1, config.attentionBias);
    } else {
      this.q_proj = lin(hiddenSize, h * d, seed + 1, config.attentionBias);
      this.k_proj = lin(hiddenSize, kv * d, seed + 3, config.attentionBias);
      this.v_proj = lin(hiddenSize, kv * d, seed + 5, config.attentionBias);
    }
    this.o_proj = lin(h * d, hiddenSize, seed + 7, config.attentionOutputBias);
    if (config.qkNorm) {
      const norm = { eps: config.rmsNormEps, device: opts.device, dtype: opts.dtype };
      this.q_norm = new LlamaRMSNorm(d, norm);
      this.k_norm = new LlamaRMSNorm(d, norm);
    }
    this.layerIndex = layerIndex;
    this.numHeads = h;
    this.numKeyValueHeads = kv;
    this.headDim = d;
    this.dropoutP = config.attentionDropout;
  }

  /** x [batch, seq, hidden] → [batch, seq, hidden]. */
  override forward(x: Tensor, ctx: LayerContext): Tensor {
    const [batch, seq] = x.shape;
    const h = this.numHeads, kvh = this.numKeyValueHeads, d = this.headDim, group = h / kvh;
    const heads = (t: Tensor, n: number) => permute(reshape(t, [batch, seq, n, d]), [0, 2, 1, 3]);
    const rope = (t: Tensor) => add(mul(t, ctx.cos), mul(matmul(t, ctx.rot), ctx.sin));
    // Qwen3 normalises each head's [headDim] vector; the head layout does not change that.
    const qn = (t: Tensor) => this.q_norm === undefined ? t : this.q_norm.forward(t, ctx.fused);
    const kn = (t: Tensor) => this.k_norm === undefined ? t : this.k_norm.forward(t, ctx.fused);
    let qx: Tensor, kx: Tensor, vx: Tensor;
    if (this.qkv_proj !== undefined) {
      // Phi-3's fused projection: queries, then keys, then values along the last axis.
      const qkv = this.qkv_proj.forward(x);
      qx = slice(qkv, 2, 0, h * d);
      kx = slice(qkv, 2, h * d, (h + kvh) * d);
      vx = slice(qkv, 2, (h + kvh) * d, (h + 2 * kvh) * d);
    } else {
      qx = this.q_proj.forward(x);
      kx = this.k_proj.forward(x);
      vx = this.v_proj.forward(x);
    }
    // Fused: one kernel splits the projection into heads and rotates them (no permute, no copy); Qwen3's
    // per-head norms go first, on the [batch, seq, heads, headDim] view.
    const split = (t: Tensor, n: number) => reshape(t, [batch, seq, n, d]);
    const q = ctx.fused
      ? rotaryHeads(this.q_norm === undefined ? qx : qn(split(qx, h)), ctx.cos, ctx.sin, h)
      : rope(qn(heads(qx, h)));
    let k = ctx.fused
      ? rotaryHeads(this.k_norm === undefined ? kx : kn(split(kx, kvh)), ctx.cos, ctx.sin, kvh)
      : rope(kn(heads(kx, kvh)));
    let v = heads(vx, kvh);
    if (ctx.cache !== null) ({ k, v } = ctx.cache.append(this.layerIndex, k, v));
    if (ctx.fused) {
      const out = causalAttention(q, k, v, { keyMask: ctx.keyMask });
      return this.o_proj.forward(reshape(permute(out, [0, 2, 1, 3]), [batch, seq, h * d]));
    }
    const keys = k.shape[2];
    // [batch, kvh, group·seq, d]: the `group` query heads that share a key/value head, stacked.
    const qg = reshape(q, [batch, kvh, group * seq, d]);
    let scores = mul(matmul(qg, transpose(k, 2, 3)), 1 / Math.sqrt(d));
    const work = computeDType(x.dtype);
    if (scores.dtype !== work) scores = cast(scores, work);
    if (ctx.mask !== null) {
      scores = reshape(add(reshape(scores, [batch, kvh, group, seq, keys]), ctx.mask), [
        batch,
        kvh,
        group * seq,
        keys,
      ]);
    }
    let probs = softmax(scores, -1);
    if (probs.dtype !== x.dtype) probs = cast(probs, x.dtype);
    if (this.training && this.dropoutP > 0) probs = dropout(probs, this.dropoutP);
    const out = reshape(matmul(probs, v), [batch, h, seq, d]);
    return this.o_proj.forward(reshape(permute(out, [0, 2, 1, 3]), [batch, seq, h * d]));
  }
}

/** The SwiGLU feed-forward block: down(silu(gate(x)) · up(x)). */
export class LlamaMLP extends Module {
  /** Gate projection [intermediate, hidden] (not present with fused projections: Phi-3's gate_up_proj). */
  gate_proj!: Linear;
  /** Up projection [intermediate, hidden] (not present with fused projections). */
  up_proj!: Linear;
  /** Phi-3: gate (first half of the output) and up (second half) in one projection [2·intermediate, hidden]. */
  gate_up_proj?: Linear;
  /** Down projection [hidden, intermediate]. */
  down_proj: Linear;

  /** The feed-forward block of layer `layerIndex`. */
  constructor(config: LlamaConfig, layerIndex: number, opts: LlamaModelOptions = {}) {
    super();
    const { hiddenSize: hd, intermediateSize: is, mlpBias: bias } = config;
    const seed = (opts.seed ?? 0) + 1000 * layerIndex + 500;
    if (config.fusedProjections) {
      this.gate_up_proj = new Linear(hd, 2 * is, { ...opts, bias, seed: seed + 1 });
    } else {
      this.gate_proj = new Linear(hd, is, { ...opts, bias, seed: seed + 1 });
      this.up_proj = new Linear(hd, is, { ...opts, bias, seed: seed + 3 });
    }
    this.down_proj = new Linear(is, hd, { ...opts, bias, seed: seed + 5 });
  }

  /** x [..., hidden] → [..., hidden]; `lean` (default) keeps only gate and up for the product's backward. */
  override forward(x: Tensor, lean = true): Tensor {
    let gate: Tensor, up: Tensor;
    if (this.gate_up_proj !== undefined) {
      const both = this.gate_up_proj.forward(x), is = both.shape[both.ndim - 1] / 2;
      gate = slice(both, -1, 0, is);
      up = slice(both, -1, is, 2 * is);
    } else {
      gate = this.gate_proj.forward(x);
      up = this.up_proj.forward(x);
    }
    return this.down_proj.forward(lean ? siluMul(gate, up) : mul(silu(gate), up));
  }
}

/** One pre-norm transformer block. */
export class LlamaDecoderLayer extends Module {
  /** Self-attention. */
  self_attn: LlamaAttention;
  /** Feed-forward block. */
  mlp: LlamaMLP;
  /** Norm before attention. */
  input_layernorm: LlamaRMSNorm;
  /** Norm before the feed-forward block. */
  post_attention_layernorm: LlamaRMSNorm;

  /** Decoder layer `layerIndex`. */
  constructor(config: LlamaConfig, layerIndex: number, opts: LlamaModelOptions = {}) {
    super();
    const norm = { eps: config.rmsNormEps, device: opts.device, dtype: opts.dtype };
    this.self_attn = new LlamaAttention(config, layerIndex, opts);
    this.mlp = new LlamaMLP(config, layerIndex, opts);
    this.input_layernorm = new LlamaRMSNorm(config.hiddenSize, norm);
    this.post_attention_layernorm = new LlamaRMSNorm(config.hiddenSize, norm);
  }

  /** x [batch, seq, hidden] → the same shape, after attention and MLP residuals. */
  override forward(x: Tensor, ctx: LayerContext): Tensor {
    const h = add(x, this.self_attn.forward(this.input_layernorm.forward(x, ctx.fused), ctx));
    return add(h, this.mlp.forward(this.post_attention_layernorm.forward(h, ctx.fused), ctx.fused));
  }
}

/** Embeddings, decoder layers and the final norm (transformers' `LlamaModel`). */
export class LlamaModel extends Module {
  /** Token embeddings [vocab, hidden]. */
  embed_tokens: Embedding;
  /** Decoder layers, in order. */
  layers: LlamaDecoderLayer[];
  /** Final norm. */
  norm: LlamaRMSNorm;

  /** All layers of a model of `config`. */
  constructor(config: LlamaConfig, opts: LlamaModelOptions = {}) {
    super();
    this.embed_tokens = new Embedding(config.vocabSize, config.hiddenSize, { ...opts, seed: opts.seed });
    this.layers = Array.from(
      { length: config.numHiddenLayers },
      (_, i) => new LlamaDecoderLayer(config, i, opts),
    );
    this.norm = new LlamaRMSNorm(config.hiddenSize, {
      eps: config.rmsNormEps,
      device: opts.device,
      dtype: opts.dtype,
    });
  }

  /** ids → final hidden states [batch, seq, hidden]. */
  override forward(ids: { data: Int32Array; shape: number[] }, ctx: LayerContext): Tensor {
    let h = this.embed_tokens.forward(ids);
    for (const layer of this.layers) h = layer.forward(h, ctx);
    return this.norm.forward(h, ctx.fused);
  }
}

/** Reads token-like input into Int32Array + [batch, seq] via toIndices, naming `what` in errors. */
function toGrid(input: TokenInput, what: string): { data: Int32Array; shape: [number, number] } {
  const op = "LlamaForCausalLM.forward";
  if (Array.isArray(input) && !input.every(Array.isArray)) {
    throw new ShapeError(`${op}: ${what} must be a non-empty list of rows, got a flat list`);
  }
  if (!Array.isArray(input) && input && typeof input === "object" && "shape" in input && "data" in input) {
    const { shape, data } = input;
    if (shape.length !== 2 || shape[0] * shape[1] !== data.length) {
      throw new ShapeError(
        `${op}: ${what} must be [batch, seq] with ${data.length} values, got shape [${shape}]`,
      );
    }
  }
  const { data, shape } = toIndices(input, op, what);
  if (shape.length !== 2 || shape[0] < 1 || shape[1] < 1) {
    throw new ShapeError(`${op}: ${what} must be [batch, seq] with batch, seq >= 1, got shape [${shape}]`);
  }
  return { data, shape: [shape[0], shape[1]] };
}

/** A causal language model: `LlamaModel` plus the output head (tied to the embeddings when configured). */
export class LlamaForCausalLM extends Module {
  /** The decoder stack. */
  model: LlamaModel;
  /** Output head [vocab, hidden] (the embedding table itself when tied). */
  lm_head: Linear;
  /** The parsed config.json; `architectures` tells PEFT helpers this is a causal LM. */
  readonly config: LlamaConfig;
  /** Parameter dtype. */
  readonly dtype: DType;
  /**
   * The checkpoint's `generation_config.json` (null when it has none); `generate` takes its
   * `eos_token_id` as the default stop.
   */
  generationConfig: GenerationConfig | null = null;
  /**
   * Families (see {@link ModelFamily}) whose configs this class builds; a subclass for another family
   * (Qwen2ForCausalLM, ...) sets its own. Everything else is shared: the families differ only in what the
   * config switches on.
   */
  static readonly families: readonly ModelFamily[] = ["llama"];
  /**
   * Attention's implementation, as transformers' `attn_implementation`: "fused" (default), the
   * memory-efficient `causalAttention`, or "eager", the composed ops that keep the [seq, keys] weights.
   * Attention dropout in training always runs eager.
   */
  attnImplementation: "fused" | "eager" = "fused";
  /**
   * Whether a forward with labels computes the loss with `linearCrossEntropy` (default), never holding
   * the whole logits, or from the full logits as before (false). An output head carrying an adapter
   * always takes the full logits.
   */
  fusedLoss = true;
  #rope: RopeTables;
  #rotations = new Map<Device, Map<DType, Tensor>>();

  /** A model of `config` (a parsed config or a config.json object) with random or shape-only weights. */
  constructor(config: LlamaConfig | Record<string, unknown>, options: LlamaModelOptions = {}) {
    super();
    const cls = new.target as typeof LlamaForCausalLM;
    const opts = checkModelOptions(options, cls.name);
    const cfg = "source" in config && "rope" in config ? config as LlamaConfig : parseLlamaConfig(config);
    if (!cls.families.includes(cfg.family)) {
      throw new ConfigError(
        `${cls.name}: config.json describes ${JSON.stringify(cfg.architectures)} (model_type ` +
          `${JSON.stringify(cfg.modelType)}), which ${cls.name} does not build; load it with ` +
          `AutoModelForCausalLM`,
      );
    }
    const o = {
      ...opts,
      device: opts.device ?? currentDevice(),
      dtype: opts.dtype ?? "f32",
      seed: opts.seed ?? nextSeed(),
    };
    this.model = cls.createDecoder(cfg, o);
    // A tied head is the embedding table itself: a shape-only placeholder avoids allocating (and
    // leaving to the garbage collector) a second vocabulary-sized matrix.
    const tied = cfg.tieWordEmbeddings;
    this.lm_head = new Linear(cfg.hiddenSize, cfg.vocabSize, {
      ...o,
      bias: false,
      seed: o.seed + 77,
      ...(tied ? { materialize: false } : {}),
    });
    if (tied) this.lm_head.weight = this.model.embed_tokens.weight;
    this.config = cfg;
    this.dtype = o.dtype;
    this.#rope = new RopeTables(cfg.headDim, cfg.rope);
  }

  /** The decoder stack `model` of a new model; a family with layers of its own (Gemma 3) overrides it. */
  protected static createDecoder(config: LlamaConfig, opts: LlamaModelOptions): LlamaModel {
    return new LlamaModel(config, opts);
  }

  /**
   * Loads a transformers checkpoint: a directory with `config.json` and `model.safetensors` (or shards
   * listed in `model.safetensors.index.json`), or `{ config, weights }` with the bytes of the
   * safetensors file(s). Weights in F32, F16 or BF16 are converted to `opts.dtype` (default f32). The
   * model comes back in eval mode, as transformers returns it.
   * @throws {ConfigError} for unsupported config fields; {@link FormatError} for missing, unexpected or
   *   mis-shaped weights (naming the key)
   */
  static async fromPretrained<T extends LlamaForCausalLM>(
    this: new (config: LlamaConfig, options?: LlamaModelOptions) => T,
    source: ModelSource | ModelSourceWithGeneration,
    options: LlamaModelOptions = {},
  ): Promise<T> {
    const { quantize, ...opts } = checkModelOptions(options, `${this.name}.fromPretrained`);
    const build = (config: LlamaConfig) => new this(config, { ...opts, materialize: false });
    // Read first: a malformed generation_config.json fails before the weights are read.
    const generation = await readGenerationConfig(source, `${this.name}.fromPretrained`);
    const model = await loadLlamaWeights(source, build, `${this.name}.fromPretrained`);
    model.generationConfig = generation;
    if (quantize !== undefined) quantizeModel(model, quantize);
    // As transformers' from_pretrained: dropout stays off until train() is called.
    return model.eval();
  }

  /**
   * The token id(s) `generate` stops at unless told otherwise: `generation_config.json`'s
   * `eos_token_id`, else config.json's; null when neither has one.
   */
  get defaultEosTokenId(): number | number[] | null {
    return defaultEosTokenId(this.generationConfig, this.config);
  }

  /** Writes `config.json` and `model.safetensors` as transformers' `save_pretrained` does. */
  async savePretrained(dir: string, opts: SaveModelOptions = {}): Promise<void> {
    await saveModel(this, dir, opts, "savePretrained");
  }

  /**
   * Moves the model like {@link Module.to} and frees the rotate-half matrices cached on other devices, so
   * that a model moved away holds no memory where it was.
   */
  override async to(device: Device): Promise<this> {
    await super.to(device);
    for (const [dev, byDType] of this.#rotations) {
      if (dev === device) continue;
      for (const rot of byDType.values()) rot.dispose();
      this.#rotations.delete(dev);
    }
    return this;
  }

  /** The ±1 rotate-half matrix on `device` in `dtype`, uploaded once. */
  #rotation(device: Device, dtype: DType): Tensor {
    let byDType = this.#rotations.get(device);
    if (byDType === undefined) this.#rotations.set(device, byDType = new Map());
    let rot = byDType.get(dtype);
    if (rot === undefined || rot.isDisposed) {
      const d = this.config.headDim;
      rot = keep(tensor(rotateHalfMatrix(d), [d, d], { device, dtype }));
      byDType.set(dtype, rot);
    }
    return rot;
  }

  /**
   * Logits and (with `labels`) transformers' causal-LM loss: labels shifted left by one, mean
   * cross-entropy over positions whose label is not −100.
   */
  override forward(inputIds: TokenInput, opts: LlamaForwardOptions = {}): CausalLMOutput {
    const ids = toGrid(inputIds, "inputIds");
    const [batch, seq] = ids.shape;
    const vocab = this.config.vocabSize;
    for (let i = 0; i < ids.data.length; i++) {
      if (ids.data[i] < 0 || ids.data[i] >= vocab) {
        throw new ShapeError(
          `LlamaForCausalLM.forward: token id ${ids.data[i]} at ${i} is not in [0, ${vocab})`,
        );
      }
    }
    const cache = opts.cache ?? null;
    const past = cache?.length ?? 0;
    if (cache !== null && cache.keys.length !== this.config.numHiddenLayers) {
      throw new ShapeError(
        `LlamaForCausalLM.forward: cache has ${cache.keys.length} layers, the model ${this.config.numHiddenLayers}`,
      );
    }
    const keys = past + seq;
    const device = this.model.embed_tokens.weight.device;
    const dtype = this.dtype;

    let keyMask: Int32Array | null = null;
    if (opts.attentionMask !== undefined) {
      const m = toGrid(opts.attentionMask, "attentionMask");
      if (m.shape[0] !== batch || m.shape[1] !== keys) {
        throw new ShapeError(
          `LlamaForCausalLM.forward: attentionMask [${m.shape}] does not match [batch, past + seq] = [${batch}, ${keys}]`,
        );
      }
      if (m.data.some((v) => v !== 0 && v !== 1)) {
        throw new ShapeError(`LlamaForCausalLM.forward: attentionMask must hold only 0 and 1`);
      }
      if (m.data.some((v) => v === 0)) keyMask = m.data;
    }

    let positions: Int32Array;
    let posBatch = 1;
    if (opts.positionIds !== undefined) {
      const p = toGrid(opts.positionIds, "positionIds");
      if (p.shape[0] !== batch || p.shape[1] !== seq) {
        throw new ShapeError(`LlamaForCausalLM.forward: positionIds [${p.shape}] must be [${batch}, ${seq}]`);
      }
      positions = p.data;
      posBatch = batch;
    } else {
      positions = Int32Array.from({ length: seq }, (_, i) => past + i);
    }
    const { cos, sin } = this.#rope.gather(positions);
    const d = this.config.headDim;
    const fused = this.attnImplementation === "fused" && !(this.training && this.config.attentionDropout > 0);
    const ctx: LayerContext = {
      positions,
      posBatch,
      cos: tensor(cos, [posBatch, 1, seq, d], { device, dtype }),
      sin: tensor(sin, [posBatch, 1, seq, d], { device, dtype }),
      rot: this.#rotation(device, dtype),
      mask: fused ? null : this.#buildMask(batch, seq, past, keyMask, device),
      fused,
      keyMask,
      cache,
    };
    if (opts.labels !== undefined && opts.lastOnly) {
      throw new ConfigError(`LlamaForCausalLM.forward: labels need every position (drop lastOnly)`);
    }
    // Labels are checked before any work is queued.
    const targets = opts.labels === undefined
      ? null
      : this.#shiftedTargets(toGrid(opts.labels, "labels"), batch, seq);
    const hidden = this.model.forward(ids, ctx);
    const h = opts.lastOnly && seq > 1 ? slice(hidden, 1, seq - 1, seq) : hidden;
    // A plain head (no adapter, no bias) can take the fused loss; anything else needs the logits.
    const plainHead = Object.getPrototypeOf(this.lm_head) === Linear.prototype && this.lm_head.bias === null;
    if (targets === null || !this.fusedLoss || !plainHead) {
      const logits = this.lm_head.forward(h);
      const loss = targets === null ? null : this.#causalLoss(logits, targets, batch, seq);
      return { logits, loss };
    }
    const loss = linearCrossEntropy(reshape(h, [batch * seq, h.shape[2]]), this.lm_head.weight, targets);
    // The logits on first access only (not enumerable: a tidy scope walking the result must not make
    // them). Read them while the forward's tensors are alive (inside the same tidy scope).
    let logits: Tensor | null = null;
    const out = { loss } as CausalLMOutput;
    Object.defineProperty(out, "logits", {
      enumerable: false,
      get: () => logits ??= this.lm_head.forward(h),
    });
    return out;
  }

  /** Causal mask plus padding mask as additive values, or null when no entry is masked. */
  #buildMask(
    batch: number,
    seq: number,
    past: number,
    keyMask: Int32Array | null,
    device: Device,
  ): Tensor | null {
    if (seq === 1 && keyMask === null) return null;
    const keys = past + seq;
    const rows = keyMask === null ? 1 : batch;
    const dtype = computeDType(this.dtype);
    const neg = maskValue(dtype);
    // Float32 holds the f32 and f16 mask value; only an f64 model needs the wider array.
    const m = dtype === "f64" ? new Float64Array(rows * seq * keys) : new Float32Array(rows * seq * keys);
    for (let b = 0; b < rows; b++) {
      for (let i = 0; i < seq; i++) {
        for (let j = 0; j < keys; j++) {
          const visible = j <= past + i && (keyMask === null || keyMask[b * keys + j] === 1);
          if (!visible) m[(b * seq + i) * keys + j] = neg;
        }
      }
    }
    return tensor(m, [rows, 1, 1, seq, keys], { device, dtype });
  }

  /** Mean cross-entropy of the full logits against the shifted targets. */
  #causalLoss(logits: Tensor, targets: Int32Array, batch: number, seq: number) {
    let flat = reshape(logits, [batch * seq, this.config.vocabSize]);
    if (flat.dtype === "f16") flat = cast(flat, "f32"); // transformers computes the loss in float32
    return crossEntropy(flat, targets);
  }

  /** transformers' causal-LM targets: labels shifted left by one, −100 at each row's last position. */
  #shiftedTargets(labels: { data: Int32Array; shape: [number, number] }, batch: number, seq: number) {
    if (labels.shape[0] !== batch || labels.shape[1] !== seq) {
      throw new ShapeError(`LlamaForCausalLM.forward: labels [${labels.shape}] must be [${batch}, ${seq}]`);
    }
    const vocab = this.config.vocabSize;
    const targets = new Int32Array(batch * seq).fill(-100);
    for (let b = 0; b < batch; b++) {
      for (let i = 0; i + 1 < seq; i++) {
        const t = labels.data[b * seq + i + 1];
        if (t !== -100 && (t < 0 || t >= vocab)) {
          throw new ShapeError(
            `LlamaForCausalLM.forward: label ${t} at row ${b}, position ${i + 1} is not in [0, ${vocab})`,
          );
        }
        targets[b * seq + i] = t;
      }
    }
    return targets;
  }

  /** One generation step for {@link generateTokens}: the new positions' last logits, cache extended. */
  forwardStep(
    ids: { data: Int32Array; shape: [number, number] },
    opts: { attentionMask: Int32Array; positionIds: Int32Array; cache: KVCache },
  ): Tensor {
    const [batch, seq] = ids.shape;
    return tidy(() =>
      noGrad(() =>
        this.forward(ids, {
          attentionMask: { data: opts.attentionMask, shape: [batch, opts.attentionMask.length / batch] },
          positionIds: { data: opts.positionIds, shape: [batch, seq] },
          cache: opts.cache,
          lastOnly: true,
        }).logits
      )
    );
  }

  /**
   * Greedy or sampled continuation of each prompt with a KV cache; returns prompt + new tokens per row.
   * Prompts of different lengths are left-padded internally. Without `eosTokenId` a row stops at
   * {@link defaultEosTokenId} (generation_config.json's EOS ids, else config.json's); `eosTokenId: null`
   * never stops early.
   */
  async generate(promptIds: number[][], opts: GenerateOptions): Promise<number[][]> {
    if (opts === null || typeof opts !== "object" || opts.eosTokenId !== undefined) {
      return await generateTokens(this, promptIds, opts); // null: never stop early
    }
    const eos = this.defaultEosTokenId;
    return await generateTokens(this, promptIds, eos === null ? opts : { ...opts, eosTokenId: eos });
  }
}
