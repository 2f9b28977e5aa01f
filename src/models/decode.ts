/**
 * The decoding step of the Llama-family models on kernels shaped for it: one new token per row, keys and
 * values in a cache allocated once at its final length ({@link StaticKVCache}), the linear layers as
 * GEMVs for 1-8 rows, attention as one kernel per layer that rotates the new query and key, writes the key
 * and value into the cache in place and attends over the row's visible slots, and the token ids staying on
 * the device from one step's choice (argmax or seeded sampling) to the next step's embedding.
 *
 * The step reads the model's modules structurally ({@link DecoderModel}), so this file does not import the
 * model classes (which import generation). Layers it cannot run this way (a Linear that carries an adapter,
 * a quantized one, more than 8 rows) go through their own forward.
 * @module
 */
import {
  add,
  concat,
  fromStorage,
  keep,
  mul,
  noGrad,
  reshape,
  silu,
  type Tensor,
  tensor,
  tidy,
  zeros,
} from "../tensor/mod.ts";
import type { Module } from "../nn/module.ts";
import { Linear } from "../nn/layers.ts";
import { adapterKind } from "../nn/adapter_hook.ts";
import type { KernelRecord } from "../backend/kernels/record.ts";
import { GEMV, GEMV_MAX_ROWS } from "../backend/kernels/gemv.ts";
import { GATHER_IDS } from "../backend/kernels/gather_ids.ts";
import { DECODE_ATTENTION } from "../backend/kernels/decode_attention.ts";
import { ARGMAX } from "../backend/kernels/argmax.ts";
import { ADD_RMS_NORM } from "../backend/kernels/add_rms_norm.ts";
import { GEMV_GLU } from "../backend/kernels/gemv_glu.ts";
import { SAMPLE_TOKEN, type SamplingWarpers } from "../backend/kernels/sample_token.ts";
import type { DType } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import type { RopeTables } from "./rope.ts";

/** A module with a forward of one tensor (norms, linears). */
interface TensorModule extends Module {
  forward(x: Tensor): Tensor;
}

/** A norm module as the step reads it: RMSNorm's scale and epsilon (LlamaRMSNorm has both). */
interface NormModule extends TensorModule {
  weight: Tensor;
  readonly eps: number;
}

/** The attention block as the step reads it (LlamaAttention's fields). */
interface AttentionParts {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  q_norm?: TensorModule;
  k_norm?: TensorModule;
  readonly numHeads: number;
  readonly numKeyValueHeads: number;
  readonly headDim: number;
}

/** What the decoding step needs of a Llama-family causal LM (LlamaForCausalLM has all of it). */
export interface DecoderModel {
  readonly config: { vocabSize: number; numHiddenLayers: number; hiddenSize: number };
  readonly dtype: DType;
  model: {
    embed_tokens: { weight: Tensor };
    layers: {
      self_attn: AttentionParts;
      mlp: { gate_proj: Linear; up_proj: Linear; down_proj: Linear };
      input_layernorm: NormModule;
      post_attention_layernorm: NormModule;
    }[];
    norm: NormModule;
  };
  lm_head: Linear;
}

/** Whether `m` has the modules {@link decodeStep} reads (every Llama-family model does). */
export function isDecoderModel(m: unknown): m is DecoderModel {
  const x = m as DecoderModel;
  return typeof x === "object" && x !== null && x.lm_head instanceof Linear &&
    Array.isArray(x.model?.layers) && x.model.layers.every((l) => l?.self_attn?.q_proj instanceof Linear) &&
    x.model.embed_tokens?.weight !== undefined;
}

/** Runs a record on tensors of one device; wraps its outputs as tensors of the given shapes. */
function runKernel<A>(record: KernelRecord<A>, inputs: Tensor[], args: A, shapes: number[][]): Tensor[] {
  const device = inputs[0].device;
  const outs = device.backend.run(record, inputs.map((t) => t.storage(record.name)), args);
  return outs.map((s, i) => fromStorage(s, shapes[i], s.dtype, device));
}

/** A Linear the GEMV can run: no adapter, not quantized, its forward not replaced. */
function isPlainLinear(m: Linear): boolean {
  return adapterKind(m) === null && m._quantLayout === null &&
    Object.getPrototypeOf(m) === Linear.prototype &&
    !Object.hasOwn(m, "forward");
}

/**
 * Whether the step runs its linear layers as GEMVs: on hardware GPUs and the CPU reference. A software
 * adapter (lavapipe, SwiftShader) runs workgroup barriers slowly, and its GEMM schedule (a block per
 * invocation) was made for it, so there the layers' own forward is faster (bench/NOTES.md).
 */
export function prefersGemv(device: Tensor["device"]): boolean {
  return !device.isSoftware;
}

/** Settings of one step that tests pin down; by default chosen from the device. */
export interface DecodeKernels {
  /** GEMV and gate/up GEMV kernels for the linear layers (default {@link prefersGemv}). */
  gemv?: boolean;
}

/** y = x Wᵀ + b for x [rows, in]: the GEMV for 1-8 rows of a plain Linear, the layer's forward otherwise. */
export function decodeLinear(m: Linear, x: Tensor, gemv = prefersGemv(x.device)): Tensor {
  const [rows, k] = x.shape;
  if (!gemv || rows > GEMV_MAX_ROWS || !isPlainLinear(m) || x.dtype !== m.weight.dtype) return m.forward(x);
  const [y] = runKernel(GEMV, [x, m.weight], { m: rows, n: m.outFeatures, k }, [[rows, m.outFeatures]]);
  return m.bias === null ? y : add(y, m.bias);
}

/**
 * The residual add h + delta and the norm after it: [new residual stream, normalised]. One dispatch for
 * an RMSNorm of the model's dtype (what every Llama-family norm is), the module's own forward otherwise.
 */
export function decodeAddNorm(norm: NormModule, h: Tensor, delta: Tensor | null): [Tensor, Tensor] {
  const [rows, n] = h.shape;
  const fused = typeof norm.eps === "number" && norm.weight?.dtype === h.dtype && norm.weight.size === n &&
    rows >= 1 && n >= 1 && (delta === null || delta.dtype === h.dtype);
  if (!fused) {
    const s = delta === null ? h : add(h, delta);
    return [s, norm.forward(s)];
  }
  const res = delta ?? zeros([rows, n], { device: h.device, dtype: h.dtype });
  const [s, y] = runKernel(ADD_RMS_NORM, [h, res, norm.weight], { rows, n, eps: norm.eps }, [[rows, n], [
    rows,
    n,
  ]]);
  return [s, y];
}

/** silu(gate(x)) · up(x): one GEMV pass over both weights for plain Linears and 1-8 rows. */
export function decodeGlu(gate: Linear, up: Linear, x: Tensor, gemv = prefersGemv(x.device)): Tensor {
  const [rows, k] = x.shape;
  const fused = gemv && rows <= GEMV_MAX_ROWS && isPlainLinear(gate) && isPlainLinear(up) &&
    gate.bias === null &&
    up.bias === null && gate.weight.dtype === x.dtype && up.weight.dtype === x.dtype;
  if (!fused) return mul(silu(decodeLinear(gate, x, gemv)), decodeLinear(up, x, gemv));
  return runKernel(GEMV_GLU, [x, gate.weight, up.weight], { m: rows, n: gate.outFeatures, k }, [[
    rows,
    gate.outFeatures,
  ]])[0];
}

/**
 * Keys and values of every layer as [batch, kvHeads, capacity, headDim], allocated once: the decoding
 * step writes each new position into its slot in place. Slot s holds position s of the left-padded batch.
 */
export class StaticKVCache {
  /** Keys per layer. */
  readonly keys: Tensor[];
  /** Values per layer. */
  readonly values: Tensor[];
  /** Slots per row. */
  readonly capacity: number;

  /** A cache holding `prefill`'s keys and values ([batch, kvHeads, len, d] per layer) in its first slots. */
  constructor(prefill: { keys: (Tensor | null)[]; values: (Tensor | null)[] }, capacity: number) {
    const grow = (t: Tensor | null) => {
      if (t === null) throw new ShapeError("StaticKVCache: the prefill left a layer without keys");
      const [b, h, len, d] = t.shape;
      if (len >= capacity) {
        throw new ShapeError(`StaticKVCache: ${len} prefill positions leave no slot of ${capacity}`);
      }
      const pad = (): Tensor => zeros([b, h, capacity - len, d], { device: t.device, dtype: t.dtype });
      return keep(tidy(() => noGrad(() => concat([t, pad()], 2))));
    };
    this.keys = prefill.keys.map(grow);
    this.values = prefill.values.map(grow);
    this.capacity = capacity;
  }

  /** Frees every layer's keys and values. */
  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
  }
}

/** Where one decoding step writes and what it sees. */
export interface DecodeStepArgs {
  /** The cache slot of this step's token (the same for every row). */
  slot: number;
  /** Rotary positions of this step's token per row [batch]. */
  positions: Int32Array;
  /** First visible slot per row (its left padding ends there) [batch]. */
  start: Int32Array;
}

/**
 * One decoding step: the token ids [batch] (f32, as the choice kernels write them) at `args.slot`, through
 * every layer with the cache extended in place; returns the logits [batch, vocab] (model dtype).
 */
export function decodeStep(
  model: DecoderModel,
  ids: Tensor,
  cache: StaticKVCache,
  rope: RopeTables,
  args: DecodeStepArgs,
  kernels: DecodeKernels = {},
): Tensor {
  const gemv = kernels.gemv ?? prefersGemv(ids.device);
  const lin = (m: Linear, x: Tensor) => decodeLinear(m, x, gemv);
  return tidy(() =>
    noGrad(() => {
      const batch = ids.size;
      const table = model.model.embed_tokens.weight;
      const [vocab, hidden] = table.shape;
      const device = table.device;
      let h =
        runKernel(GATHER_IDS, [table, ids], { rows: vocab, dim: hidden, count: batch }, [[batch, hidden]])[0];
      const { cos, sin } = rope.gather(args.positions);
      const d = rope.headDim;
      const cosT = tensor(cos, [batch, d], { device, dtype: "f32" });
      const sinT = tensor(sin, [batch, d], { device, dtype: "f32" });
      // The residual stream is h + delta; each add is folded into the norm that follows it.
      let delta: Tensor | null = null;
      model.model.layers.forEach((layer, l) => {
        const at = layer.self_attn;
        let x: Tensor;
        [h, x] = decodeAddNorm(layer.input_layernorm, h, delta);
        let q = lin(at.q_proj, x);
        let k = lin(at.k_proj, x);
        const v = lin(at.v_proj, x);
        const heads = at.numHeads, kvh = at.numKeyValueHeads;
        if (at.q_norm !== undefined) {
          q = reshape(at.q_norm.forward(reshape(q, [batch, heads, d])), [batch, heads * d]);
        }
        if (at.k_norm !== undefined) {
          k = reshape(at.k_norm.forward(reshape(k, [batch, kvh, d])), [batch, kvh * d]);
        }
        const [attn] = runKernel(DECODE_ATTENTION, [q, k, v, cosT, sinT, cache.keys[l], cache.values[l]], {
          batch,
          heads,
          kvHeads: kvh,
          headDim: d,
          capacity: cache.capacity,
          pos: args.slot,
          start: args.start,
          scale: 1 / Math.sqrt(d),
        }, [[batch, heads * d], [batch, heads, cache.capacity]]);
        let y: Tensor;
        [h, y] = decodeAddNorm(layer.post_attention_layernorm, h, lin(at.o_proj, attn));
        const mlp = layer.mlp;
        delta = lin(mlp.down_proj, decodeGlu(mlp.gate_proj, mlp.up_proj, y, gemv));
      });
      const [, normed] = decodeAddNorm(model.model.norm, h, delta);
      return lin(model.lm_head, normed);
    })
  );
}

/** How a step's token is chosen: argmax, or a seeded draw with the warpers. */
export type TokenChoice = { greedy: true } | ({ greedy: false; seed: number } & SamplingWarpers);

/**
 * The next token of each row of `logits` [batch, vocab] as f32 ids [batch] on the logits' device. Draws
 * use counters `counter .. counter + batch − 1`, so a loop that passes the same counters draws the same
 * tokens however often it reads them back.
 */
export function chooseTokens(logits: Tensor, choice: TokenChoice, counter: number): Tensor {
  const [rows, n] = logits.shape.length === 3 ? [logits.shape[0], logits.shape[2]] : logits.shape;
  return noGrad(() =>
    choice.greedy
      ? runKernel(ARGMAX, [logits], { rows, n }, [[rows]])[0]
      : runKernel(SAMPLE_TOKEN, [logits], { rows, n, ...choice, counter }, [[rows]])[0]
  );
}
