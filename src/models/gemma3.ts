/**
 * transformers' `Gemma3ForCausalLM` (Gemma 3's text model, `model_type: "gemma3_text"`) on the public
 * tensor ops. Module names and state-dict keys are transformers' (`model.layers.0.pre_feedforward_layernorm`,
 * ...), so checkpoints and PEFT adapters (targets `q_proj`, ..., `down_proj`) map one to one. What sets it
 * apart from Llama, each as transformers 5.17's modeling_gemma3.py computes it:
 * - embeddings multiplied by √hidden rounded to the model's dtype (`Gemma3TextScaledWordEmbedding`);
 * - every RMSNorm scales by (1 + weight), normalising and scaling in f32 before the cast back, and its
 *   weight starts at zero;
 * - queries and keys pass per-head RMSNorms (`q_norm`, `k_norm`) before the rotary embedding, and scores
 *   are scaled by `query_pre_attn_scalar`^−½;
 * - `layer_types` mixes sliding-window layers (a query sees the last `sliding_window` positions, itself
 *   included) and full causal layers, each type with its own rotary settings (sliding: base 10 000;
 *   full: its own base, possibly linearly scaled);
 * - a layer normalises the attention output (`post_attention_layernorm`) before the residual add, and
 *   wraps the MLP in `pre_feedforward_layernorm` / `post_feedforward_layernorm`;
 * - the MLP is down(gelu_tanh(gate(x)) · up(x)); the output head is tied to the embeddings by default.
 * The forward, loss, KV cache and generation are Llama's (src/models/llama.ts), which builds this decoder
 * through its `createDecoder` hook; generation runs the reference loop (the device decoding step is
 * Llama's layer).
 * @module
 */
import { Module } from "../nn/module.ts";
import { Embedding, Linear, RMSNorm } from "../nn/layers.ts";
import {
  add,
  cast,
  causalAttention,
  dropout,
  fusedRmsNorm,
  type IndexInput,
  matmul,
  mean,
  mul,
  permute,
  reshape,
  rmsNorm,
  rotaryEmbedding,
  rsqrt,
  scale,
  sigmoid,
  softmax,
  square,
  type Tensor,
  tensor,
  transpose,
  zeros,
} from "../tensor/mod.ts";
import type { Device } from "../backend/device.ts";
import type { DType } from "../core/dtype.ts";
import { roundToF16 } from "../core/half.ts";
import { ConfigError } from "../core/errors.ts";
import type { Gemma3Settings, LlamaConfig, ModelFamily } from "./config.ts";
import type { Gemma3LayerType } from "./gemma3_config.ts";
import {
  computeDType,
  type LayerContext,
  LlamaForCausalLM,
  type LlamaModelOptions,
  maskValue,
} from "./llama.ts";
import { RopeTables } from "./rope.ts";
import { type GenerateOptions, generateTokensReference } from "./generate.ts";

/** The Gemma 3 settings of a parsed config; a ConfigError naming `where` if it is another family's. */
function gemmaSettings(config: LlamaConfig, where: string): Gemma3Settings {
  if (config.gemma3 === undefined) {
    throw new ConfigError(
      `${where}: config ${JSON.stringify(config.architectures)} (model_type ${
        JSON.stringify(config.modelType)
      }) is not a Gemma 3 config`,
    );
  }
  return config.gemma3;
}

/**
 * transformers' `Gemma3RMSNorm`: x / √(mean(x²) + eps) · (1 + weight), computed in f32 and cast back to
 * the input's dtype at the end (Llama casts before the scale; Gemma after). The weight starts at zero, so
 * a fresh norm is the identity scale. f64 inputs stay in f64 (our gradient checks; torch would drop to
 * f32).
 */
export class Gemma3RMSNorm extends RMSNorm {
  /** A norm over the last axis of width `dim`, weight zero. */
  constructor(dim: number, opts: { eps?: number; device?: Device; dtype?: DType } = {}) {
    super(dim, opts);
    // RMSNorm starts at ones; Gemma's (1 + w) starts at w = 0 (transformers' _init_weights).
    this.weight.dispose();
    this.weight = zeros([dim], { device: opts.device, dtype: opts.dtype, requiresGrad: true });
  }

  /** x [..., dim] → the same shape; `lean` (default) runs the fused kernel where the dtypes allow. */
  override forward(x: Tensor, lean = true): Tensor {
    if (x.dtype !== "f16" && this.weight.dtype === x.dtype) {
      const w = add(this.weight, 1);
      return lean ? fusedRmsNorm(x, w, this.eps) : rmsNorm(x, w, this.eps);
    }
    // f16 (or a weight of another dtype): normalise and scale in f32, one rounding at the end.
    const x32 = cast(x, "f32");
    const normed = mul(x32, rsqrt(add(mean(square(x32), -1, true), this.eps)));
    const w32 = add(this.weight.dtype === "f32" ? this.weight : cast(this.weight, "f32"), 1);
    return cast(mul(normed, w32), x.dtype);
  }
}

/**
 * transformers' `Gemma3TextScaledWordEmbedding`: the table lookup times √hidden, the factor rounded to
 * f32 (a float32 buffer in transformers) and then to the table's dtype, as `embed_scale.to(dtype)` does.
 */
export class Gemma3ScaledEmbedding extends Embedding {
  /** The factor the looked-up rows are multiplied by, in the table's precision. */
  readonly embedScale: number;

  /** A table [num, dim] whose rows come out times √dim. */
  constructor(
    numEmbeddings: number,
    embeddingDim: number,
    opts: { device?: Device; dtype?: DType; seed?: number; materialize?: boolean } = {},
  ) {
    super(numEmbeddings, embeddingDim, opts);
    const s = Math.fround(Math.sqrt(embeddingDim));
    this.embedScale = this.weight.dtype === "f16" ? roundToF16(s) : s;
  }

  /** ids → rows of the table times {@link embedScale}. */
  override forward(ids: IndexInput | Tensor): Tensor {
    return scale(super.forward(ids), this.embedScale);
  }
}

/**
 * The tanh approximation of GELU (PyTorch's `gelu(approximate="tanh")`, transformers'
 * "gelu_pytorch_tanh"): 0.5·x·(1 + tanh(u)) with u = √(2/π)·(x + 0.044715·x³), written as x·σ(2u)
 * (the same function, since 1 + tanh(u) = 2σ(2u)) from the differentiable ops every device has. f16
 * inputs are computed in f32 and rounded once, as PyTorch's kernel does.
 */
export function geluTanh(x: Tensor): Tensor {
  if (x.dtype === "f16") return cast(geluTanh(cast(x, "f32")), "f16");
  const inner = add(x, scale(mul(square(x), x), 0.044715));
  return mul(x, sigmoid(scale(inner, 2 * Math.sqrt(2 / Math.PI))));
}

/**
 * Gemma 3's attention: q, k, v and o projections (biases per `attention_bias`), per-head `q_norm` /
 * `k_norm` before the rotary embedding, scores scaled by `query_pre_attn_scalar`^−½, and on sliding
 * layers a window of `sliding_window` keys.
 */
export class Gemma3Attention extends Module {
  /** Query projection [heads·headDim, hidden]. */
  q_proj: Linear;
  /** Key projection [kvHeads·headDim, hidden]. */
  k_proj: Linear;
  /** Value projection [kvHeads·headDim, hidden]. */
  v_proj: Linear;
  /** Output projection [hidden, heads·headDim]. */
  o_proj: Linear;
  /** (1 + w) RMSNorm over each query head [headDim]. */
  q_norm: Gemma3RMSNorm;
  /** (1 + w) RMSNorm over each key head [headDim]. */
  k_norm: Gemma3RMSNorm;
  /** Position of this layer (its slot in a KV cache). */
  readonly layerIndex: number;
  /** This layer's entry of `layer_types`. */
  readonly layerType: Gemma3LayerType;
  /** Query heads. */
  readonly numHeads: number;
  /** Key/value heads. */
  readonly numKeyValueHeads: number;
  /** Width of each head. */
  readonly headDim: number;
  /** Attention-weight dropout in training mode. */
  readonly dropoutP: number;
  /** Multiplier of q · k: `query_pre_attn_scalar`^−½. */
  readonly scaling: number;
  /** Keys a query sees on a sliding layer, itself included; 0 (no limit) on a full layer. */
  readonly window: number;

  /** The attention block of layer `layerIndex`. */
  constructor(config: LlamaConfig, layerIndex: number, opts: LlamaModelOptions = {}) {
    super();
    const g = gemmaSettings(config, "Gemma3Attention");
    const { hiddenSize, numAttentionHeads: h, numKeyValueHeads: kv, headDim: d } = config;
    const seed = (opts.seed ?? 0) + 1000 * layerIndex;
    const lin = (inF: number, outF: number, s: number) =>
      new Linear(inF, outF, { ...opts, bias: config.attentionBias, seed: seed + s });
    this.q_proj = lin(hiddenSize, h * d, 1);
    this.k_proj = lin(hiddenSize, kv * d, 3);
    this.v_proj = lin(hiddenSize, kv * d, 5);
    this.o_proj = lin(h * d, hiddenSize, 7);
    const norm = { eps: config.rmsNormEps, device: opts.device, dtype: opts.dtype };
    this.q_norm = new Gemma3RMSNorm(d, norm);
    this.k_norm = new Gemma3RMSNorm(d, norm);
    this.layerIndex = layerIndex;
    this.layerType = g.layerTypes[layerIndex];
    this.numHeads = h;
    this.numKeyValueHeads = kv;
    this.headDim = d;
    this.dropoutP = config.attentionDropout;
    // transformers multiplies the float32 scores by the Python float; torch rounds it to float32.
    this.scaling = Math.fround(Math.pow(g.queryPreAttnScalar, -0.5));
    this.window = this.layerType === "sliding_attention" ? g.slidingWindow : 0;
  }

  /** x [batch, seq, hidden] → [batch, seq, hidden]; `ctx` holds this layer type's rotary tables and mask. */
  override forward(x: Tensor, ctx: LayerContext): Tensor {
    const [batch, seq] = x.shape;
    const h = this.numHeads, kvh = this.numKeyValueHeads, d = this.headDim, group = h / kvh;
    const heads = (t: Tensor, n: number) => permute(reshape(t, [batch, seq, n, d]), [0, 2, 1, 3]);
    const rope = (t: Tensor) =>
      ctx.fused
        ? rotaryEmbedding(t, ctx.cos, ctx.sin, ctx.rot)
        : add(mul(t, ctx.cos), mul(matmul(t, ctx.rot), ctx.sin));
    const q = rope(this.q_norm.forward(heads(this.q_proj.forward(x), h), ctx.fused));
    let k = rope(this.k_norm.forward(heads(this.k_proj.forward(x), kvh), ctx.fused));
    let v = heads(this.v_proj.forward(x), kvh);
    if (ctx.cache !== null) ({ k, v } = ctx.cache.append(this.layerIndex, k, v));
    if (ctx.fused) {
      const out = causalAttention(q, k, v, {
        keyMask: ctx.keyMask,
        window: this.window,
        scale: this.scaling,
      });
      return this.o_proj.forward(reshape(permute(out, [0, 2, 1, 3]), [batch, seq, h * d]));
    }
    // Eager, as transformers' eager_attention_forward: scores, additive mask (the window included), f32
    // softmax, dropout in training.
    const keys = k.shape[2];
    const qg = reshape(q, [batch, kvh, group * seq, d]);
    let scores = mul(matmul(qg, transpose(k, 2, 3)), this.scaling);
    const work = computeDType(x.dtype);
    if (scores.dtype !== work) scores = cast(scores, work);
    if (ctx.mask !== null) {
      scores = reshape(
        add(reshape(scores, [batch, kvh, group, seq, keys]), ctx.mask),
        [batch, kvh, group * seq, keys],
      );
    }
    let probs = softmax(scores, -1);
    if (probs.dtype !== x.dtype) probs = cast(probs, x.dtype);
    if (this.training && this.dropoutP > 0) probs = dropout(probs, this.dropoutP);
    const out = reshape(matmul(probs, v), [batch, h, seq, d]);
    return this.o_proj.forward(reshape(permute(out, [0, 2, 1, 3]), [batch, seq, h * d]));
  }
}

/** Gemma 3's feed-forward block: down(gelu_tanh(gate(x)) · up(x)), no biases. */
export class Gemma3MLP extends Module {
  /** Gate projection [intermediate, hidden]. */
  gate_proj: Linear;
  /** Up projection [intermediate, hidden]. */
  up_proj: Linear;
  /** Down projection [hidden, intermediate]. */
  down_proj: Linear;

  /** The feed-forward block of layer `layerIndex`. */
  constructor(config: LlamaConfig, layerIndex: number, opts: LlamaModelOptions = {}) {
    super();
    const { hiddenSize: hd, intermediateSize: is } = config;
    const seed = (opts.seed ?? 0) + 1000 * layerIndex + 500;
    this.gate_proj = new Linear(hd, is, { ...opts, bias: false, seed: seed + 1 });
    this.up_proj = new Linear(hd, is, { ...opts, bias: false, seed: seed + 3 });
    this.down_proj = new Linear(is, hd, { ...opts, bias: false, seed: seed + 5 });
  }

  /** x [..., hidden] → [..., hidden]. */
  override forward(x: Tensor): Tensor {
    return this.down_proj.forward(mul(geluTanh(this.gate_proj.forward(x)), this.up_proj.forward(x)));
  }
}

/** One Gemma 3 block: norms around both the attention and the MLP, residual adds after them. */
export class Gemma3DecoderLayer extends Module {
  /** Self-attention (sliding or full, per `layer_types`). */
  self_attn: Gemma3Attention;
  /** Feed-forward block. */
  mlp: Gemma3MLP;
  /** Norm of the block's input, before attention. */
  input_layernorm: Gemma3RMSNorm;
  /** Norm of the attention output, before the residual add. */
  post_attention_layernorm: Gemma3RMSNorm;
  /** Norm before the MLP. */
  pre_feedforward_layernorm: Gemma3RMSNorm;
  /** Norm of the MLP output, before the residual add. */
  post_feedforward_layernorm: Gemma3RMSNorm;

  /** Decoder layer `layerIndex`. */
  constructor(config: LlamaConfig, layerIndex: number, opts: LlamaModelOptions = {}) {
    super();
    const norm = { eps: config.rmsNormEps, device: opts.device, dtype: opts.dtype };
    this.self_attn = new Gemma3Attention(config, layerIndex, opts);
    this.mlp = new Gemma3MLP(config, layerIndex, opts);
    this.input_layernorm = new Gemma3RMSNorm(config.hiddenSize, norm);
    this.post_attention_layernorm = new Gemma3RMSNorm(config.hiddenSize, norm);
    this.pre_feedforward_layernorm = new Gemma3RMSNorm(config.hiddenSize, norm);
    this.post_feedforward_layernorm = new Gemma3RMSNorm(config.hiddenSize, norm);
  }

  /** x [batch, seq, hidden] → the same shape. */
  override forward(x: Tensor, ctx: LayerContext): Tensor {
    const lean = ctx.fused;
    const attn = this.self_attn.forward(this.input_layernorm.forward(x, lean), ctx);
    const h = add(x, this.post_attention_layernorm.forward(attn, lean));
    const ff = this.mlp.forward(this.pre_feedforward_layernorm.forward(h, lean));
    return add(h, this.post_feedforward_layernorm.forward(ff, lean));
  }
}

/**
 * The additive mask [rows, 1, 1, seq, keys] of a sliding layer on the eager path: key j is visible to
 * query i (at position past + i) when j <= past + i, j > past + i − window and the key is not padding
 * (transformers' sliding_window_overlay over its causal and padding masks); null when nothing is masked.
 */
function slidingMask(
  batch: number,
  seq: number,
  past: number,
  window: number,
  keyMask: Int32Array | null,
  device: Device,
  dtype: DType,
): Tensor | null {
  const keys = past + seq;
  if (seq === 1 && keyMask === null && keys <= window) return null;
  const rows = keyMask === null ? 1 : batch;
  const neg = maskValue(dtype);
  const m = dtype === "f64" ? new Float64Array(rows * seq * keys) : new Float32Array(rows * seq * keys);
  for (let b = 0; b < rows; b++) {
    for (let i = 0; i < seq; i++) {
      const q = past + i;
      for (let j = 0; j < keys; j++) {
        const visible = j <= q && j > q - window && (keyMask === null || keyMask[b * keys + j] === 1);
        if (!visible) m[(b * seq + i) * keys + j] = neg;
      }
    }
  }
  return tensor(m, [rows, 1, 1, seq, keys], { device, dtype });
}

/** transformers' `Gemma3TextModel`: scaled embeddings, decoder layers of both kinds, final norm. */
export class Gemma3TextModel extends Module {
  /** Token embeddings [vocab, hidden], looked up times √hidden. */
  embed_tokens: Gemma3ScaledEmbedding;
  /** Decoder layers, in order. */
  layers: Gemma3DecoderLayer[];
  /** Final norm. */
  norm: Gemma3RMSNorm;
  /** The Gemma 3 settings the layers were built with. */
  readonly settings: Gemma3Settings;
  /** Rotary tables of the sliding layers (the full layers' come with the forward's context). */
  #slidingRope: RopeTables;

  /** All layers of a model of `config`. */
  constructor(config: LlamaConfig, opts: LlamaModelOptions = {}) {
    super();
    this.settings = gemmaSettings(config, "Gemma3TextModel");
    this.embed_tokens = new Gemma3ScaledEmbedding(config.vocabSize, config.hiddenSize, opts);
    this.layers = Array.from(
      { length: config.numHiddenLayers },
      (_, i) => new Gemma3DecoderLayer(config, i, opts),
    );
    this.norm = new Gemma3RMSNorm(config.hiddenSize, {
      eps: config.rmsNormEps,
      device: opts.device,
      dtype: opts.dtype,
    });
    this.#slidingRope = new RopeTables(config.headDim, this.settings.slidingRope);
  }

  /**
   * The context of the sliding layers: their own rotary tables for the same positions and, on the eager
   * path, the windowed mask (the fused attention takes the window itself).
   */
  #slidingContext(ctx: LayerContext, batch: number): LayerContext {
    const { cos, sin } = this.#slidingRope.gather(ctx.positions);
    const device = ctx.cos.device, dtype = ctx.cos.dtype;
    const seq = ctx.positions.length / ctx.posBatch, d = ctx.cos.shape[3];
    const past = ctx.cache?.length ?? 0; // read before any layer appends this forward's keys
    return {
      ...ctx,
      cos: tensor(cos, [ctx.posBatch, 1, seq, d], { device, dtype }),
      sin: tensor(sin, [ctx.posBatch, 1, seq, d], { device, dtype }),
      mask: ctx.fused ? null : slidingMask(
        batch,
        seq,
        past,
        this.settings.slidingWindow,
        ctx.keyMask,
        device,
        computeDType(dtype),
      ),
    };
  }

  /** ids → final hidden states [batch, seq, hidden]; `ctx` carries the full layers' tables and mask. */
  override forward(ids: { data: Int32Array; shape: number[] }, ctx: LayerContext): Tensor {
    const types = this.settings.layerTypes;
    const sliding = types.includes("sliding_attention") ? this.#slidingContext(ctx, ids.shape[0]) : ctx;
    let h = this.embed_tokens.forward(ids);
    this.layers.forEach((layer, i) => {
      h = layer.forward(h, types[i] === "sliding_attention" ? sliding : ctx);
    });
    return this.norm.forward(h, ctx.fused);
  }
}

/**
 * transformers' `Gemma3ForCausalLM` (the text model of Gemma 3, e.g. gemma-3-1b and gemma-3-270m):
 * see this file's description for what it computes. Soft-capping, bidirectional attention and
 * activations other than gelu_pytorch_tanh are ConfigErrors naming the field. `generate` runs the
 * reference decoding loop (every step through this model's forward).
 */
export class Gemma3ForCausalLM extends LlamaForCausalLM {
  /** Builds `model_type: "gemma3_text"` configs. */
  static override readonly families: readonly ModelFamily[] = ["gemma3"];
  /** The decoder stack (transformers' `Gemma3TextModel`). */
  declare model: Gemma3TextModel;

  /** Gemma 3's decoder in place of Llama's. */
  protected static override createDecoder(config: LlamaConfig, opts: LlamaModelOptions): Gemma3TextModel {
    return new Gemma3TextModel(config, opts);
  }

  /**
   * Greedy or sampled continuation as {@link LlamaForCausalLM.generate} (the same options and EOS
   * default), through the reference loop: the device decoding step is written for Llama's layers.
   */
  override async generate(promptIds: number[][], opts: GenerateOptions): Promise<number[][]> {
    if (opts === null || typeof opts !== "object" || opts.eosTokenId !== undefined) {
      return await generateTokensReference(this, promptIds, opts);
    }
    const eos = this.defaultEosTokenId;
    return await generateTokensReference(this, promptIds, eos === null ? opts : { ...opts, eosTokenId: eos });
  }
}
