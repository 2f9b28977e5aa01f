/**
 * The fused LoRA linear on WebGPU, as plans of a few dispatches. Notation: x [m, K], W [N, K], A [R, K],
 * B [N, R], dy [m, N]; drop_pre / drop_post are the dropout masks (keyed by x and y element indices,
 * as the CPU reference does).
 *
 * Forward, y = x Wᵀ + b + scale · drop_post((drop_pre(x) Aᵀ) Bᵀ):
 *   1. t = drop_pre(x) Aᵀ, [m, R] in f32 (one row block per workgroup): scratch freed after step 2, or,
 *      when the op records a backward, its own storage made first by loraInner and passed in (`inner`);
 *   2. one GEMM pass over y: the LoRA term (P = t, Q = B) accumulated first, scaled and masked, then the
 *      base product and the bias on top (gemm.ts, LoraPhase).
 * Backward, from x, A, B and the forward's t (keeping its 4·m·R bytes saves a whole skinny GEMM over x;
 * given no t, the backward records step 1 again):
 *   1. g = dyl B, dyl = drop_post(dy), [m, R] f32 scratch;
 *   2. dx = dy W + scale · drop_pre ⊙ (g A), one GEMM pass with a LoRA phase;
 *   3. dA = scale · gᵀ drop_pre(x) and 4. dB = scale · dylᵀ t, GEMMs over the tokens, split-K when
 *      the token count is deep and the outputs small (partial sums per token chunk, then a reduce); on
 *      hardware GPUs, up to 4,096 tokens, both in one dispatch instead (gemm.ts recordGemmPair, dB
 *      as tᵀ · dyl stored transposed), each being too small to fill the GPU alone.
 * Every phase is a GEMM dispatch (gemm.ts) of wgsl/gemm/tiled.wgsl or wgsl/gemm/direct.wgsl; the output
 * passes carry the LoRA phase of wgsl/gemm/lora_phase.wgsl, split-K passes end in
 * wgsl/gemm/splitk_reduce.wgsl. The CPU reference of both is in cpu/cpu_backend.ts.
 *
 * Mixed precision: A and B may be f32 over an f16 base (x, W, dy, y and dx in the base's type). Each GEMM
 * operand carries its own type and every product accumulates in f32, so the adapters are read and
 * dA / dB written in their own type, with no cast and no fallback to the composed path.
 * @module
 */
import type { FusedDropout, LoraBackwardArgs, LoraForwardArgs, LoraInnerArgs } from "../backend.ts";
import { type GemmContext, recordGemm, recordGemmPair, type WgslType } from "./gemm.ts";
import { pairTile } from "./gemm_plan.ts";
import type { Binding } from "./runtime.ts";

/** The dropout of `position`, or null when absent or p is 0 (no mask, as the CPU reference does). */
function dropoutAt(d: FusedDropout | null, position: "pre" | "post"): FusedDropout | null {
  return d !== null && d.position === position && d.p > 0 ? d : null;
}

/** Buffers of the fused operands. */
export interface LoraBindings {
  x: Binding;
  w: Binding;
  a: Binding;
  b: Binding;
}

/** Records t = drop_pre(x) · Aᵀ; returns it as a fresh f32 buffer [m, R] (the caller releases or adopts it). */
export function recordLoraInner(
  ctx: GemmContext,
  args: LoraInnerArgs,
  bind: { x: Binding; a: Binding },
  op = "loraInner",
): Binding {
  const T = args.x.dtype as WgslType;
  const pre = dropoutAt(args.dropout, "pre");
  return recordGemm(ctx, {
    a: { bind: bind.x, type: T, trans: false, masked: pre !== null },
    b: { bind: bind.a, type: args.a.dtype as WgslType, trans: true },
    m: args.m,
    n: args.rank,
    k: args.inFeatures,
    dropout: pre,
    outType: "f32",
    what: `${op}: x·Aᵀ [${args.m}, ${args.rank}]`,
  });
}

/** The given t (`inner`), else t recorded into scratch; `release` frees only what was recorded here. */
function innerOrRecorded(
  ctx: GemmContext,
  args: LoraInnerArgs,
  bind: LoraBindings & { inner: Binding | null },
  op: string,
): { t: Binding; release: () => void } {
  if (bind.inner !== null) return { t: bind.inner, release: () => {} };
  const t = recordLoraInner(ctx, args, bind, op);
  return { t, release: () => ctx.rt.release(t.buf) };
}

/** Records the fused forward (reading `bind.inner` as t where given); returns y [m, N] in x's dtype. */
export function recordLoraForward(
  ctx: GemmContext,
  args: LoraForwardArgs,
  bind: LoraBindings & { bias: Binding | null; inner: Binding | null },
): Binding {
  const op = "loraForward";
  const T = args.x.dtype as WgslType;
  const { t, release } = innerOrRecorded(ctx, args, bind, op);
  const y = recordGemm(ctx, {
    a: { bind: bind.x, type: T, trans: false },
    b: { bind: bind.w, type: T, trans: true, quant: args.wQuant },
    m: args.m,
    n: args.outFeatures,
    k: args.inFeatures,
    lora: {
      p: t,
      q: bind.b,
      qType: args.b.dtype as WgslType,
      r: args.rank,
      scale: args.scale,
      dropout: dropoutAt(args.dropout, "post"),
    },
    bias: bind.bias,
    outType: T,
    what: `${op}: output [${args.m}, ${args.outFeatures}] (${T})`,
  });
  release();
  return y;
}

/**
 * Records the fused backward; returns dx (when asked for) in x's dtype, dA and dB in the adapters'. With
 * `bind.inner` (the forward's t) dB reads it; without, t is recorded again first.
 */
export function recordLoraBackward(
  ctx: GemmContext,
  args: LoraBackwardArgs,
  bind: LoraBindings & { dy: Binding; inner: Binding | null },
): { dx: Binding | null; dA: Binding; dB: Binding } {
  const op = "loraBackward";
  const { m, inFeatures: K, outFeatures: N, rank: R, scale } = args;
  const T = args.x.dtype as WgslType;
  const TA = args.a.dtype as WgslType, TB = args.b.dtype as WgslType;
  const pre = dropoutAt(args.dropout, "pre"), post = dropoutAt(args.dropout, "post");
  const { t, release } = innerOrRecorded(ctx, args, bind, op);
  // dA = scale · gᵀ · drop_pre(x) [R, K] and dB = scale · dylᵀ · t [N, R] read the tokens the same way once
  // dB is taken as its transpose tᵀ · dyl [R, N]; where the device pairs rank-wide products (pairTile),
  // both run in one dispatch after g and dx: each alone is bound by a dispatch's fixed cost.
  const tile = TA === TB && m > 0 && K > 0 && N > 0 && R > 0 ? pairTile(R, m, ctx.profile) : null;
  // Apart: dB first, dA last: dB needs only dy and t, and dA's product does not read dx, so neither waits
  // on the pass before it and a WebGPU implementation that puts barriers only between dependent passes
  // may overlap them. On the H200 the order changed the small shapes by under 1% (bench/NOTES.md, fifth
  // session): kept because it costs nothing, not because it was shown to pay.
  const dBApart = tile === null
    ? recordGemm(ctx, {
      a: { bind: bind.dy, type: T, trans: true, masked: post !== null },
      b: { bind: t, type: "f32", trans: false },
      m: N,
      n: R,
      k: m,
      alpha: scale,
      dropout: post,
      outType: TB,
      what: `${op}: dB [${N}, ${R}] (${TB})`,
    })
    : null;
  const g = recordGemm(ctx, {
    a: { bind: bind.dy, type: T, trans: false, masked: post !== null },
    b: { bind: bind.b, type: TB, trans: false },
    m,
    n: R,
    k: N,
    dropout: post,
    outType: "f32",
    what: `${op}: dy·B [${m}, ${R}]`,
  });
  const dx = args.needDx
    ? recordGemm(ctx, {
      a: { bind: bind.dy, type: T, trans: false },
      b: { bind: bind.w, type: T, trans: false, quant: args.wQuant },
      m,
      n: K,
      k: N,
      lora: { p: g, q: bind.a, qType: TA, r: R, scale, dropout: pre },
      outType: T,
      what: `${op}: dx [${m}, ${K}] (${T})`,
    })
    : null;
  const dAReq = {
    a: { bind: g, type: "f32" as const, trans: true },
    b: { bind: bind.x, type: T, trans: false, masked: pre !== null },
    m: R,
    n: K,
    k: m,
    alpha: scale,
    dropout: pre,
    outType: TA,
    what: `${op}: dA [${R}, ${K}] (${TA})`,
  };
  const [dA, dB] = tile === null ? [recordGemm(ctx, dAReq), dBApart as Binding] : recordGemmPair(ctx, {
    first: dAReq,
    second: {
      a: { bind: t, type: "f32", trans: true },
      b: { bind: bind.dy, type: T, trans: false, masked: post !== null },
      m: R,
      n: N,
      k: m,
      alpha: scale,
      dropout: post,
      outType: TB,
      what: `${op}: dB [${N}, ${R}] (${TB})`,
    },
  }, tile);
  ctx.rt.release(g.buf);
  release();
  return { dx, dA, dB };
}
