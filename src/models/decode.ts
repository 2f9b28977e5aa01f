/**
 * The decoding step of the Llama-family models on kernels shaped for it: one new token per row, keys and
 * values in a cache allocated once at its final length ({@link StaticKVCache}), the linear layers as
 * GEMVs for 1-8 rows, attention as one kernel per layer that rotates the new query and key, writes the key
 * and value into the cache in place and attends over the row's visible slots, and the token ids staying on
 * the device from one step's choice (argmax or seeded sampling) to the next step's embedding.
 *
 * A layer is five dispatches: its input RMSNorm fused into one GEMV over the q, k and v weights
 * (`gemvNorm`, the three outputs side by side), attention, o_proj with the residual add (`gemv` with a
 * residual), the post-attention norm fused into the gate/up GEMV with SiLU and the product (`gemvGlu`),
 * and down_proj with the residual add; the final norm and the LM head are two more. A step uploads
 * nothing: the rotary tables and each row's first slot are on the device for the whole generation, so the
 * same buffers are bound every step and the runtime's bind-group cache hits.
 *
 * Batch rows routed to several adapters (PeftModel's `adapterNames`) keep the same structure: the base
 * GEMVs as above (their LoRA terms left out), then one `loraRowsParts` dispatch per projection group
 * (q|k|v with the input norm fused, o_proj, gate|up with SiLU × up fused, down_proj) adds each row's own
 * adapter terms from the layer's packed adapters, so a mixed batch takes as many dispatches per step as
 * one adapter. Each group's row→adapter table is uploaded by the first step of a generation
 * ({@link DecodeConstants}, {@link RoutedTables}) and bound by every later one.
 *
 * The step reads the model's modules structurally ({@link DecoderModel}), so this file does not import the
 * model classes (which import generation), nor src/peft: adapted layers answer src/nn/adapter_hook.ts's
 * `decodeParts`. Layers it cannot run this way (an adapter with dropout on, a quantized layer with one
 * LoRA, more than 8 rows) go through their own forward, and the norm before them through `addRmsNorm`;
 * Qwen3's q/k norms take the unfused projections.
 * @module
 */
import {
  add,
  concat,
  fromStorage,
  keep,
  noGrad,
  reshape,
  siluMul,
  slice,
  type Tensor,
  tensor,
  tidy,
  zeros,
} from "../tensor/mod.ts";
import type { Module } from "../nn/module.ts";
import { Linear } from "../nn/layers.ts";
import { adapterKind, decodeParts, type RoutedLora } from "../nn/adapter_hook.ts";
import type { KernelRecord } from "../backend/kernels/record.ts";
import { GEMV, GEMV_MAX_ROWS } from "../backend/kernels/gemv.ts";
import { GEMV_NORM } from "../backend/kernels/gemv_norm.ts";
import { GEMV_QUANT, gemvQuantFits } from "../backend/kernels/gemv_quant.ts";
import type { QuantLayout } from "../backend/kernels/quantize.ts";
import { GATHER_IDS } from "../backend/kernels/gather_ids.ts";
import { DECODE_ATTENTION, type QkvLayout } from "../backend/kernels/decode_attention.ts";
import { ARGMAX, ARGMAX_CHUNK, ARGMAX_PARTIAL } from "../backend/kernels/argmax.ts";
import { ADD_RMS_NORM } from "../backend/kernels/add_rms_norm.ts";
import { RMS_NORM } from "../backend/kernels/rms_norm.ts";
import { GEMV_GLU } from "../backend/kernels/gemv_glu.ts";
import { LORA_ROWS_PARTS, loraRowsPartsTable, type LoraRowsSlot } from "../backend/kernels/lora_rows.ts";
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

/** The attention block as the step reads it (LlamaAttention's fields; Phi-3 has qkv_proj instead). */
interface AttentionParts {
  q_proj?: Linear;
  k_proj?: Linear;
  v_proj?: Linear;
  /** Phi-3's fused projection: queries, keys, values along the output axis. */
  qkv_proj?: Linear;
  o_proj: Linear;
  q_norm?: TensorModule;
  k_norm?: TensorModule;
  readonly numHeads: number;
  readonly numKeyValueHeads: number;
  readonly headDim: number;
}

/** The feed-forward block as the step reads it (LlamaMLP's fields; Phi-3 has gate_up_proj instead). */
interface MlpParts {
  gate_proj?: Linear;
  up_proj?: Linear;
  /** Phi-3's fused projection: gate rows, then up rows. */
  gate_up_proj?: Linear;
  down_proj: Linear;
}

/** What the decoding step needs of a Llama-family causal LM (LlamaForCausalLM has all of it). */
export interface DecoderModel {
  readonly config: { vocabSize: number; numHiddenLayers: number; hiddenSize: number };
  readonly dtype: DType;
  model: {
    embed_tokens: { weight: Tensor };
    layers: {
      self_attn: AttentionParts;
      mlp: MlpParts;
      input_layernorm: NormModule;
      post_attention_layernorm: NormModule;
    }[];
    norm: NormModule;
  };
  lm_head: Linear;
}

/** Whether the attention block has separate or fused (Phi-3) projections, all Linears. */
function hasProjections(a: AttentionParts | undefined, m: MlpParts | undefined): boolean {
  if (a === undefined || m === undefined || !(a.o_proj instanceof Linear && m.down_proj instanceof Linear)) {
    return false;
  }
  const attn = a.qkv_proj instanceof Linear ||
    (a.q_proj instanceof Linear && a.k_proj instanceof Linear && a.v_proj instanceof Linear);
  const mlp = m.gate_up_proj instanceof Linear ||
    (m.gate_proj instanceof Linear && m.up_proj instanceof Linear);
  return attn && mlp;
}

/**
 * Families whose computation {@link decodeStep} is: the Llama one with plain RMSNorms and unscaled
 * embeddings (Gemma 3's (1 + w) norms, scaled embeddings and sliding windows are not; it keeps the
 * reference loop). A model whose config names no family is read by its modules alone.
 */
const DECODE_FAMILIES: readonly string[] = ["llama", "qwen2", "qwen3", "phi3"];

/** Whether `m` has the modules {@link decodeStep} reads (every Llama-family model does, Phi-3 too). */
export function isDecoderModel(m: unknown): m is DecoderModel {
  const x = m as DecoderModel & { config?: { family?: string } };
  const family = x?.config?.family;
  if (family !== undefined && !DECODE_FAMILIES.includes(family)) return false;
  return typeof x === "object" && x !== null && x.lm_head instanceof Linear &&
    Array.isArray(x.model?.layers) && x.model.layers.every((l) => hasProjections(l?.self_attn, l?.mlp)) &&
    x.model.embed_tokens?.weight !== undefined;
}

/** Runs a record on tensors of one device; wraps its outputs as tensors of the given shapes. */
function runKernel<A>(record: KernelRecord<A>, inputs: Tensor[], args: A, shapes: number[][]): Tensor[] {
  const device = inputs[0].device;
  const outs = device.backend.run(record, inputs.map((t) => t.storage(record.name)), args);
  return outs.map((s, i) => fromStorage(s, shapes[i], s.dtype, device));
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
  /**
   * Norms fused into the GEMVs after them (`gemvNorm`, `gemvGlu` with its norm; default true). False runs
   * each norm as its own dispatch, for measuring what the fusion gains.
   */
  fuseNorm?: boolean;
}

/**
 * What the GEMV kernels run of a Linear: its weight and bias, and its LoRA term when it carries one, or
 * each batch row's own adapter term when its rows are routed to several (`routed`; `lora` is then null).
 */
interface GemvLinear {
  weight: Tensor;
  bias: Tensor | null;
  out: number;
  lora: { a: Tensor; b: Tensor; scale: number } | null;
  routed: RoutedLora | null;
  /** A quantized weight's layout (its weight is then the packed words): `gemvQuant` runs it. */
  quant: QuantLayout | null;
}

/**
 * The GEMV form of `m` for rows of x, or null when the layer's own forward must run: GEMVs not chosen,
 * more than 8 rows, a quantized weight, a replaced forward, an adapter whose forward is more than base
 * plus LoRA terms now (src/nn/adapter_hook.ts `decodeParts`), rows routed for another batch size, or a
 * tensor of another dtype than x.
 */
function gemvLinear(m: Linear, x: Tensor, gemv: boolean): GemvLinear | null {
  if (!gemv || x.shape[0] > GEMV_MAX_ROWS || Object.hasOwn(m, "forward")) return null;
  const quant = m._quantLayout;
  if (quant !== null && !gemvQuantFits(quant, m.inFeatures)) return null;
  let lora: GemvLinear["lora"] = null, routed: RoutedLora | null = null;
  if (adapterKind(m) !== null) {
    const parts = decodeParts(m);
    if (parts === null) return null;
    lora = parts.lora;
    routed = parts.routed ?? null;
    if (
      routed !== null &&
      (lora !== null || routed.rows.length !== x.shape[0] || routed.a.dtype !== x.dtype ||
        routed.b.dtype !== x.dtype)
    ) {
      return null;
    }
  } else if (Object.getPrototypeOf(m) !== Linear.prototype) return null;
  // A quantized base with an adapter keeps its forward (QLoRA: the fused GEMM decodes the codes itself).
  if (quant !== null && lora !== null) return null;
  const dt = x.dtype;
  if ((quant === null && m.weight.dtype !== dt) || (m.bias !== null && m.bias.dtype !== dt)) return null;
  if (lora !== null && (lora.a.dtype !== dt || lora.b.dtype !== dt || lora.a.shape[0] !== lora.b.shape[1])) {
    return null;
  }
  return { weight: m.weight, bias: m.bias, out: m.outFeatures, lora, routed, quant };
}

/** Whether any of `gs` has its rows routed to several adapters. */
const anyRouted = (gs: readonly GemvLinear[]) => gs.some((g) => g.routed !== null);

/** A {@link LORA_ROWS_PARTS} table on the device, the batch size it is for, and its largest rank. */
interface RoutedTable {
  table: Tensor;
  rows: number;
  maxRank: number;
  /** Every A offset a multiple of 4 (the kernel's vec4 loads). */
  aligned: boolean;
}

/** What stands for a group's absent part, or one without an adapter, in {@link RoutedTables}' keys. */
const NO_PART = {};

/**
 * The {@link LORA_ROWS_PARTS} tables of one generation, uploaded on the first step that needs each and
 * read by every step after it: keyed by the identity of what the group's linears answered (a
 * {@link RoutedLora} is the same object for a whole generation; a plain LoRA part by its A tensor, its
 * scale being fixed for the generation), through nested weak maps, so a step's lookups cost a few hash
 * probes and build no strings.
 */
export class RoutedTables {
  readonly #root = new WeakMap<object, WeakMap<object, WeakMap<object, RoutedTable>>>();
  readonly #all: RoutedTable[] = [];

  /** The object that identifies part q of a group. */
  static #part(gs: readonly (GemvLinear | null)[], q: number): object {
    const g = gs[q] ?? null;
    return g?.routed ?? g?.lora?.a ?? NO_PART;
  }

  /** The table of the group `gs` over `rows` batch rows, or undefined before it is {@link set}. */
  get(gs: readonly (GemvLinear | null)[], rows: number): RoutedTable | undefined {
    const e = this.#root.get(RoutedTables.#part(gs, 0))?.get(RoutedTables.#part(gs, 1))
      ?.get(RoutedTables.#part(gs, 2));
    return e?.rows === rows ? e : undefined;
  }

  /** Keeps `entry` (its table made inside a step's tidy scope) for the group `gs` until {@link dispose}. */
  set(gs: readonly (GemvLinear | null)[], entry: RoutedTable): void {
    const [k0, k1, k2] = [0, 1, 2].map((q) => RoutedTables.#part(gs, q));
    let l1 = this.#root.get(k0);
    if (l1 === undefined) this.#root.set(k0, l1 = new WeakMap());
    let l2 = l1.get(k1);
    if (l2 === undefined) l1.set(k1, l2 = new WeakMap());
    const old = l2.get(k2);
    if (old !== undefined) old.table.dispose();
    const kept = { ...entry, table: keep(entry.table) };
    l2.set(k2, kept);
    this.#all.push(kept);
  }

  /** How many tables were uploaded (tests check that steps after the first add none). */
  get size(): number {
    return this.#all.length;
  }

  /** Frees every table. */
  dispose(): void {
    for (const { table } of this.#all) if (!table.isDisposed) table.dispose();
    this.#all.length = 0;
  }
}

/**
 * y0 [rows, n0 + n1 + n2] (the base outputs of the linears `gs`, side by side) plus each row's LoRA
 * terms: every part's routed adapters, or its one LoRA for all rows (a part of the group that is not
 * routed), over x, normalised in the kernel by `norm` when given; with `glu` SwiGLU's product of the
 * column halves instead (gate then up). One {@link LORA_ROWS_PARTS} dispatch; its table comes from
 * `tables` (uploaded on a generation's first step) or, without them, is uploaded now.
 */
function routedTerms(
  gs: readonly (GemvLinear | null)[],
  parts: [number, number, number],
  x: Tensor,
  y0: Tensor,
  norm: NormModule | null,
  glu: boolean,
  tables: RoutedTables | null,
): Tensor {
  const [rows, k] = x.shape;
  let entry = tables?.get(gs, rows);
  if (entry === undefined) {
    const lists = [0, 1, 2].map((q): readonly (LoraRowsSlot | null)[] | null => {
      const g = gs[q] ?? null;
      if (g?.routed) return g.routed.rows;
      if (!g?.lora) return null;
      const slot = { rank: g.lora.a.shape[0], aOffset: 0, bOffset: 0, scale: g.lora.scale };
      return new Array(rows).fill(slot);
    });
    const sizes = [0, 1, 2].map((q) => {
      const g = gs[q] ?? null, ab = g?.routed ?? g?.lora ?? null;
      return ab === null ? null : { a: ab.a.size, b: ab.b.size };
    });
    const { table, maxRank, aligned } = loraRowsPartsTable(rows, k, parts, lists, sizes);
    entry = {
      table: tensor(table, [table.length], { device: x.device, dtype: "f32" }),
      rows,
      maxRank,
      aligned,
    };
    tables?.set(gs, entry);
  }
  const some = gs.find((g) => g?.routed ?? g?.lora)!;
  const fill = (some.routed ?? some.lora)!.a;
  const a = [0, 1, 2].map((q) => (gs[q]?.routed ?? gs[q]?.lora)?.a ?? fill);
  const b = [0, 1, 2].map((q) => (gs[q]?.routed ?? gs[q]?.lora)?.b ?? fill);
  const total = parts[0] + parts[1] + parts[2];
  return runKernel(LORA_ROWS_PARTS, [x, norm?.weight ?? x, y0, ...a, ...b, entry.table], {
    m: rows,
    k,
    parts,
    maxRank: entry.maxRank,
    norm: norm === null ? null : { eps: norm.eps },
    glu,
    aligned: entry.aligned,
    spread: !x.device.isSoftware,
  }, [[rows, glu ? total / 2 : total]])[0];
}

/** The LoRA rank of a GEMV linear (0 without one). */
const rankOf = (g: GemvLinear) => g.lora?.a.shape[0] ?? 0;

/**
 * x Wᵀ (+ res) (+ scale · (x Aᵀ) Bᵀ): one GEMV, and one more for x Aᵀ when the layer carries LoRA. The
 * bias is left to the caller.
 */
function gemvProduct(g: GemvLinear, x: Tensor, res: Tensor | null): Tensor {
  const [rows, k] = x.shape;
  if (g.quant !== null) {
    return runKernel(GEMV_QUANT, [x, g.weight, res ?? x], {
      m: rows,
      n: g.out,
      k,
      layout: g.quant,
      residual: res !== null,
    }, [[rows, g.out]])[0];
  }
  let t = x, b = g.weight, lora = null;
  if (g.lora !== null) {
    const r = rankOf(g);
    t = runKernel(GEMV, [x, g.lora.a, x, x, x], { m: rows, n: r, k }, [[rows, r]])[0];
    b = g.lora.b;
    lora = { r, scale: g.lora.scale };
  }
  return runKernel(GEMV, [x, g.weight, res ?? x, t, b], {
    m: rows,
    n: g.out,
    k,
    residual: res !== null,
    lora,
  }, [[
    rows,
    g.out,
  ]])[0];
}

/**
 * y = x Wᵀ + b for x [rows, in]: GEMVs for 1-8 rows (with a LoRA term, or the rows' routed terms after
 * them: `tables` hold a generation's routing tables), the layer's forward otherwise.
 */
export function decodeLinear(
  m: Linear,
  x: Tensor,
  gemv = prefersGemv(x.device),
  tables: RoutedTables | null = null,
): Tensor {
  const g = gemvLinear(m, x, gemv);
  if (g === null) return m.forward(x);
  let y = gemvProduct(g, x, null);
  if (g.bias !== null) y = add(y, g.bias);
  return g.routed === null ? y : routedTerms([g], [g.out, 0, 0], x, y, null, false, tables);
}

/** Whether `norm` is an RMSNorm the fused kernels apply to rows of h (scale of h's dtype and width). */
function normFuses(norm: NormModule, h: Tensor): boolean {
  const [rows, n] = h.shape;
  return typeof norm.eps === "number" && norm.weight?.dtype === h.dtype && norm.weight.size === n &&
    rows >= 1 && n >= 1;
}

/**
 * The residual add h + delta and the norm after it: [new residual stream, normalised]. One dispatch for
 * an RMSNorm of the model's dtype (what every Llama-family norm is), the module's own forward otherwise.
 */
export function decodeAddNorm(norm: NormModule, h: Tensor, delta: Tensor | null): [Tensor, Tensor] {
  const [rows, n] = h.shape;
  const fused = normFuses(norm, h) && (delta === null || delta.dtype === h.dtype);
  if (!fused) {
    const s = delta === null ? h : add(h, delta);
    return [s, norm.forward(s)];
  }
  // Nothing to add: the norm alone (one dispatch, no zeros to fill).
  if (delta === null) {
    return [h, runKernel(RMS_NORM, [h, norm.weight], { rows, n, eps: norm.eps }, [[rows, n]])[0]];
  }
  const [s, y] = runKernel(ADD_RMS_NORM, [h, delta, norm.weight], { rows, n, eps: norm.eps }, [[rows, n], [
    rows,
    n,
  ]]);
  return [s, y];
}

/**
 * The LoRA A-products of up to three GEMV linears over norm(h), side by side [rows, r0 + r1 + r2] (one
 * `gemvNorm` over the A weights), with their ranks and scales; null when none carries LoRA.
 */
function loraInputs(norm: NormModule | null, h: Tensor, gs: GemvLinear[]) {
  if (gs.every((g) => g.lora === null)) return null;
  const [rows, k] = h.shape;
  const ranks = [0, 1, 2].map((i) => (gs[i] === undefined ? 0 : rankOf(gs[i]))) as [number, number, number];
  const scales = [0, 1, 2].map((i) => gs[i]?.lora?.scale ?? 0) as [number, number, number];
  const some = gs.find((g) => g.lora !== null)!.lora!.a;
  const a = [0, 1, 2].map((i) => gs[i]?.lora?.a ?? some);
  const bs = [0, 1, 2].map((i) => gs[i]?.lora?.b ?? some);
  const rt = ranks[0] + ranks[1] + ranks[2];
  const nw = norm?.weight ?? h;
  const [t] = runKernel(GEMV_NORM, [h, nw, ...a, ...a, h], {
    m: rows,
    parts: ranks,
    k,
    eps: norm?.eps ?? 0,
    bias: false,
    norm: norm !== null,
  }, [[rows, rt]]);
  return { t, ranks, scales, bs };
}

/**
 * silu(gate(x)) · up(x): one GEMV pass over both weights (with their LoRA terms) for 1-8 rows; with rows
 * routed to several adapters, the two base products side by side and one routed pass with the product.
 */
export function decodeGlu(
  gate: Linear,
  up: Linear,
  x: Tensor,
  gemv = prefersGemv(x.device),
  tables: RoutedTables | null = null,
): Tensor {
  const g = gemvLinear(gate, x, gemv), u = gemvLinear(up, x, gemv);
  if (
    g === null || u === null || g.bias !== null || u.bias !== null || g.quant !== null || u.quant !== null
  ) {
    return siluMul(decodeLinear(gate, x, gemv, tables), decodeLinear(up, x, gemv, tables));
  }
  if (anyRouted([g, u])) return routedGlu(null, x, [g, u], [g.out, u.out, 0], tables);
  return gluKernel(null, x, g, u, 0);
}

/**
 * SwiGLU of linears whose rows are routed to several adapters: one `gemvNorm` of the base weights (the
 * gate's and up's columns side by side; `norm` fused when given), then one {@link LORA_ROWS_PARTS} pass
 * that adds each row's terms and takes the product. `gs` are the gate and up, or a fused gate_up weight
 * alone (parts [2n, 0, 0]).
 */
function routedGlu(
  norm: NormModule | null,
  x: Tensor,
  gs: GemvLinear[],
  parts: [number, number, number],
  tables: RoutedTables | null,
): Tensor {
  const [rows, k] = x.shape;
  const w = [0, 1, 2].map((i) => (gs[i] ?? gs[0]).weight);
  const [y0] = runKernel(GEMV_NORM, [x, norm?.weight ?? x, ...w, ...w, x], {
    m: rows,
    parts,
    k,
    eps: norm?.eps ?? 0,
    norm: norm !== null,
    bias: false,
  }, [[rows, parts[0] + parts[1] + parts[2]]]);
  return routedTerms(gs, parts, x, y0, norm, true, tables);
}

/**
 * The gemvGlu dispatch over x (normalised by `norm` on the fly when given), with the gate's and up's
 * LoRA terms when they carry them (their A-products first, one more dispatch).
 */
function gluKernel(
  norm: NormModule | null,
  x: Tensor,
  g: GemvLinear,
  u: GemvLinear,
  upOffset: number,
): Tensor {
  const [rows, k] = x.shape, n = g.out;
  const lin = loraInputs(norm, x, [g, u]);
  const lora = lin === null
    ? null
    : { rg: lin.ranks[0], ru: lin.ranks[1], sg: lin.scales[0], su: lin.scales[1] };
  return runKernel(
    GEMV_GLU,
    [
      x,
      norm?.weight ?? x,
      g.weight,
      u.weight,
      lin?.t ?? x,
      lin?.bs[0] ?? x,
      lin?.bs[1] ?? x,
    ],
    { m: rows, n, k, norm: norm === null ? null : { eps: norm.eps }, upOffset, lora },
    [[rows, n]],
  )[0];
}

/**
 * The residual stream between the kernels of a step: its value is h + delta, where delta is an add not
 * yet done (null when a fused kernel took it, or nothing is pending). The norm after it folds it in.
 */
interface Stream {
  h: Tensor;
  delta: Tensor | null;
}

/** Folds a pending delta into h (for the unfused kernels). */
function settle(s: Stream): Tensor {
  if (s.delta !== null) {
    s.h = add(s.h, s.delta);
    s.delta = null;
  }
  return s.h;
}

/** A projection's output: columns offset .. offset + width of a [rows, stride] tensor (outputs side by side). */
interface Columns {
  t: Tensor;
  stride: number;
  offset: number;
}

/**
 * norm(stream) through 1-3 linears: one `gemvNorm` dispatch (the outputs side by side; a second one first
 * for the A-products when any carries LoRA) when the norm is an RMSNorm and the linears run as GEMVs with
 * biases on all or none (none with LoRA), else the norm (with the pending add) and each linear on its
 * own. Returns where each linear's output is.
 */
function normLinears(
  norm: NormModule,
  s: Stream,
  ms: Linear[],
  gemv: boolean,
  fuseNorm = true,
  tables: RoutedTables | null = null,
): Columns[] {
  const h = s.h, [rows, k] = h.shape;
  const gs = ms.map((m) => gemvLinear(m, h, gemv));
  const ok = gs.every((g) => g !== null && g.quant === null) ? gs as GemvLinear[] : null;
  const biased = ok !== null && ok.every((g) => g.bias !== null);
  // Routed rows take their LoRA terms after the base products, so biases fuse with them too.
  const routed = ok !== null && anyRouted(ok);
  const fused = fuseNorm && ok !== null && s.delta === null && ms.length <= 3 && normFuses(norm, h) &&
    (biased ? routed || ok.every((g) => g.lora === null) : ok.every((g) => g.bias === null));
  if (!fused) {
    let x: Tensor;
    [s.h, x] = decodeAddNorm(norm, h, s.delta);
    s.delta = null;
    return ms.map((m) => ({ t: decodeLinear(m, x, gemv, tables), stride: m.outFeatures, offset: 0 }));
  }
  const parts = [0, 1, 2].map((i) => ok[i]?.out ?? 0) as [number, number, number];
  const w = [0, 1, 2].map((i) => (ok[i] ?? ok[0]).weight);
  const offsets = ms.map((_, i) => (i === 0 ? 0 : parts[0] + (i === 2 ? parts[1] : 0)));
  const total = parts[0] + parts[1] + parts[2];
  if (routed) {
    const e = biased ? [0, 1, 2].map((i) => (ok[i] ?? ok[0]).bias!) : w;
    const [y0] = runKernel(GEMV_NORM, [h, norm.weight, ...w, ...e, h], {
      m: rows,
      parts,
      k,
      eps: norm.eps,
      bias: biased,
      lora: null,
    }, [[rows, total]]);
    const y = routedTerms(ok, parts, h, y0, norm, false, tables);
    return offsets.map((offset) => ({ t: y, stride: total, offset }));
  }
  const lin = loraInputs(norm, h, ok);
  const e = biased ? [0, 1, 2].map((i) => (ok[i] ?? ok[0]).bias!) : lin?.bs ?? w;
  const [y] = runKernel(GEMV_NORM, [h, norm.weight, ...w, ...e, lin?.t ?? h], {
    m: rows,
    parts,
    k,
    eps: norm.eps,
    bias: biased,
    lora: lin === null ? null : { ranks: lin.ranks, scales: lin.scales },
  }, [[rows, total]]);
  return offsets.map((offset) => ({ t: y, stride: total, offset }));
}

/**
 * stream += x Wᵀ (+ b): the GEMV with its residual add fused when it can (and routed rows' terms added
 * to its output), else a pending delta.
 */
function addLinear(m: Linear, x: Tensor, s: Stream, gemv: boolean, tables: RoutedTables | null): void {
  const g = gemvLinear(m, x, gemv);
  if (g !== null && s.delta === null && g.bias === null && s.h.dtype === x.dtype) {
    s.h = gemvProduct(g, x, s.h);
    if (g.routed !== null) s.h = routedTerms([g], [g.out, 0, 0], x, s.h, null, false, tables);
    return;
  }
  settle(s);
  s.delta = decodeLinear(m, x, gemv, tables);
}

/** silu(gate(norm(stream))) · up(norm(stream)): one `gemvGlu` dispatch with the norm fused when it can. */
function normGlu(
  norm: NormModule,
  s: Stream,
  mlp: MlpParts,
  gemv: boolean,
  fuseNorm = true,
  tables: RoutedTables | null = null,
): Tensor {
  const h = s.h, k = h.shape[1];
  const fusedWeight = mlp.gate_up_proj !== undefined;
  const gate = mlp.gate_up_proj ?? mlp.gate_proj!, up = mlp.gate_up_proj ?? mlp.up_proj!;
  const g = gemvLinear(gate, h, gemv), u = gemvLinear(up, h, gemv);
  if (
    g !== null && u !== null && anyRouted([g, u]) && g.bias === null && u.bias === null &&
    g.quant === null && u.quant === null
  ) {
    // Routed rows: the base products side by side, then one pass adding each row's terms with SiLU × up.
    const gs = fusedWeight ? [g] : [g, u];
    const parts: [number, number, number] = fusedWeight ? [g.out, 0, 0] : [g.out, u.out, 0];
    if (fuseNorm && s.delta === null && normFuses(norm, h)) return routedGlu(norm, h, gs, parts, tables);
    let x: Tensor;
    [s.h, x] = decodeAddNorm(norm, h, s.delta);
    s.delta = null;
    return routedGlu(null, x, gs, parts, tables);
  }
  // A fused gate_up weight runs as both halves only without LoRA (its one B spans both).
  const plain = g !== null && u !== null && g.bias === null && u.bias === null && g.quant === null &&
    u.quant === null && (!fusedWeight || g.lora === null);
  const n = fusedWeight ? gate.outFeatures / 2 : gate.outFeatures;
  const half = (x: GemvLinear): GemvLinear => (fusedWeight ? { ...x, out: n } : x);
  const upOffset = fusedWeight ? n * k : 0;
  if (fuseNorm && plain && s.delta === null && normFuses(norm, h)) {
    return gluKernel(norm, h, half(g), half(u), upOffset);
  }
  let x: Tensor;
  [s.h, x] = decodeAddNorm(norm, h, s.delta);
  s.delta = null;
  if (!fusedWeight) return decodeGlu(gate, up, x, gemv, tables);
  if (plain) return gluKernel(null, x, half(g), half(u), upOffset);
  const both = decodeLinear(mlp.gate_up_proj!, x, gemv, tables);
  return siluMul(slice(both, 1, 0, n), slice(both, 1, n, 2 * n));
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

/**
 * What every step of one generation reads and nothing changes: the rotary tables for positions
 * 0 .. capacity − 1 and each row's first visible slot (its left padding), on the device once.
 */
export class DecodeConstants {
  /** cos of the rotary angles, [capacity, headDim] f32. */
  readonly cos: Tensor;
  /** sin of the rotary angles, [capacity, headDim] f32. */
  readonly sin: Tensor;
  /** First visible slot per row, [batch] f32; row b's token in slot s sits at position s − start[b]. */
  readonly start: Tensor;
  /** The routed LoRA tables of rows routed to several adapters, uploaded by the first step. */
  readonly routed: RoutedTables = new RoutedTables();

  /** Tables of `capacity` positions from `rope`, and the rows' first slots `start`, on `device`. */
  constructor(rope: RopeTables, capacity: number, start: Int32Array, device: Tensor["device"]) {
    const { cos, sin } = rope.gather(Int32Array.from({ length: capacity }, (_, i) => i));
    const d = rope.headDim;
    this.cos = keep(tensor(cos, [capacity, d], { device, dtype: "f32" }));
    this.sin = keep(tensor(sin, [capacity, d], { device, dtype: "f32" }));
    this.start = keep(tensor(Float32Array.from(start), [start.length], { device, dtype: "f32" }));
  }

  /** Frees the tables and the starts. */
  dispose(): void {
    for (const t of [this.cos, this.sin, this.start]) t.dispose();
    this.routed.dispose();
  }
}

/**
 * One decoding step: the token ids [batch] (f32, as the choice kernels write them) at cache slot `slot`,
 * through every layer with the cache extended in place; returns the logits [batch, vocab] (model dtype).
 * Row b's token is at rotary position slot − start[b] (`constants`).
 */
export function decodeStep(
  model: DecoderModel,
  ids: Tensor,
  cache: StaticKVCache,
  constants: DecodeConstants,
  slot: number,
  kernels: DecodeKernels = {},
): Tensor {
  const gemv = kernels.gemv ?? prefersGemv(ids.device), fuse = kernels.fuseNorm ?? true;
  const tables = constants.routed;
  return tidy(() =>
    noGrad(() => {
      const batch = ids.size;
      const table = model.model.embed_tokens.weight;
      const [vocab, hidden] = table.shape;
      const s: Stream = {
        h: runKernel(GATHER_IDS, [table, ids], { rows: vocab, dim: hidden, count: batch }, [[
          batch,
          hidden,
        ]])[0],
        delta: null,
      };
      model.model.layers.forEach((layer, l) => {
        const at = layer.self_attn;
        const heads = at.numHeads, kvh = at.numKeyValueHeads, d = at.headDim;
        let q: Columns, k: Columns, v: Columns;
        if (at.qkv_proj !== undefined) {
          const [all] = normLinears(layer.input_layernorm, s, [at.qkv_proj], gemv, fuse, tables);
          q = all;
          k = { ...all, offset: all.offset + heads * d };
          v = { ...all, offset: all.offset + (heads + kvh) * d };
        } else {
          [q, k, v] = normLinears(
            layer.input_layernorm,
            s,
            [at.q_proj!, at.k_proj!, at.v_proj!],
            gemv,
            fuse,
            tables,
          );
        }
        if (at.qkv_proj === undefined && (at.q_norm !== undefined || at.k_norm !== undefined)) {
          // Qwen3 normalises each head of q and k before the rotation: their columns are cut out for it.
          const headNorm = (c: Columns, norm: TensorModule | undefined, n: number): Columns => {
            if (norm === undefined) return c;
            const own = c.stride === n * d && c.offset === 0
              ? c.t
              : slice(c.t, 1, c.offset, c.offset + n * d);
            return {
              t: reshape(norm.forward(reshape(own, [batch, n, d])), [batch, n * d]),
              stride: n * d,
              offset: 0,
            };
          };
          q = headNorm(q, at.q_norm, heads);
          k = headNorm(k, at.k_norm, kvh);
        }
        const layout: QkvLayout = {
          qStride: q.stride,
          qOffset: q.offset,
          kStride: k.stride,
          kOffset: k.offset,
          vStride: v.stride,
          vOffset: v.offset,
        };
        const [attn] = runKernel(DECODE_ATTENTION, [
          q.t,
          k.t,
          v.t,
          constants.cos,
          constants.sin,
          cache.keys[l],
          cache.values[l],
          constants.start,
        ], {
          batch,
          heads,
          kvHeads: kvh,
          headDim: d,
          capacity: cache.capacity,
          pos: slot,
          scale: 1 / Math.sqrt(d),
          layout,
        }, [[batch, heads * d], [batch, heads, cache.capacity]]);
        addLinear(at.o_proj, attn, s, gemv, tables);
        addLinear(
          layer.mlp.down_proj,
          normGlu(layer.post_attention_layernorm, s, layer.mlp, gemv, fuse, tables),
          s,
          gemv,
          tables,
        );
      });
      // The final norm stays its own dispatch: fused, each of the LM head's ~10^5 workgroups would
      // normalise the rows again (on the H200 the fused SmolLM2 head took 100 us against 60 + 8 apart, and
      // Llama-3.2-1B's 543 us for 1 GB of weight).
      return normLinears(model.model.norm, s, [model.lm_head], gemv, false, tables)[0].t;
    })
  );
}

/** Argmax of each row of logits [rows, n] as f32 ids; a long row in two passes (chunks, then their winners). */
function greedyIds(logits: Tensor, rows: number, n: number): Tensor {
  if (n <= ARGMAX_CHUNK) return runKernel(ARGMAX, [logits], { rows, n }, [[rows]])[0];
  const chunks = Math.ceil(n / ARGMAX_CHUNK);
  return tidy(() => {
    const [part] = runKernel(ARGMAX_PARTIAL, [logits], { rows, n, chunk: ARGMAX_CHUNK }, [[rows, chunks, 2]]);
    return runKernel(ARGMAX, [part], { rows, n: chunks, pairs: true }, [[rows]])[0];
  });
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
      ? greedyIds(logits, rows, n)
      : runKernel(SAMPLE_TOKEN, [logits], { rows, n, ...choice, counter }, [[rows]])[0]
  );
}
