/**
 * Recording GEMMs: plain products (batched, transposed, dropout on load, split-K with a reduce) and the
 * LoRA output product (a LoRA pre-phase, scale, output dropout and bias in the same kernel). Both run on
 * the schedule of the device (gemm_plan.ts). Results are raw buffers; the backend wraps them as storages.
 * @module
 */
import type { FusedDropout, WeightQuant } from "../backend.ts";
import { type PipelineCache, WORKGROUP_SIZE } from "./pipelines.ts";
import {
  blocksPerWorkgroup,
  type GemmPlan,
  type GemmProfile,
  type GemmTile,
  planGemm,
  streamKPartBytes,
} from "./gemm_plan.ts";
import { ConfigError, ShapeError } from "../../core/errors.ts";
import {
  GEMM_DIRECT,
  GEMM_DIRECT_PAIR,
  GEMM_PAIR_PARAMS,
  GEMM_PARAMS,
  GEMM_TILED,
  GEMM_TILED_PARAMS,
  GEMM_TILED_STREAM_K,
  STREAM_K_FIXUP,
} from "../kernels/gemm.ts";
import { SPLITK_REDUCE, SPLITK_REDUCE_BIAS } from "../kernels/splitk_reduce.ts";
import { dropoutParams } from "../kernels/dropout_mask.ts";
import { type KernelTemplate, packParams } from "../kernels/record.ts";
import type { TemplateParams } from "./template.ts";
import type { Binding, GpuRuntime, Grid } from "./runtime.ts";

/** WGSL name of a storage element type. */
export type WgslType = "f32" | "f16";

/** What recording needs: the runtime, the pipelines and the device's GEMM profile. */
export interface GemmContext {
  rt: GpuRuntime;
  kernels: PipelineCache;
  profile: GemmProfile;
}

/** Bytes a buffer of `size` elements of `type` occupies (padded to 4, at least 4). */
export function bufferBytes(size: number, type: WgslType): number {
  return Math.max(4, Math.ceil((size * (type === "f16" ? 2 : 4)) / 4) * 4);
}

/** The kernel template of each GEMM schedule (gemm_plan.ts). */
export const SCHEDULE_TEMPLATE = { tiled: GEMM_TILED, direct: GEMM_DIRECT } as const;

/** One operand of a GEMM: its buffer, element type, layout and dropout flag. */
export interface GemmOperand {
  bind: Binding;
  type: WgslType;
  /** Stored transposed (see wgsl/gemm/direct.wgsl). */
  trans: boolean;
  /** Elements between batch entries; 0 broadcasts one matrix over the batch. */
  zStride?: number;
  /** Multiply each element by its dropout factor (keyed by its index in storage). */
  masked?: boolean;
  /** B only: a packed quantized weight, dequantized on load (kernels/quantize.ts). */
  quant?: WeightQuant | null;
}

/**
 * The LoRA pre-phase of the output kernel: scale · mask ⊙ (P · op(Q)) is accumulated before the main
 * product, op being the main B operand's (transposed when B is).
 */
export interface LoraPhase {
  /** P [m, r], f32. */
  p: Binding;
  /** Q: [n, r] when B is transposed, else [r, n]. */
  q: Binding;
  /** Q's element type when it differs from B's (f32 adapters over an f16 base); default B's. */
  qType?: WgslType;
  r: number;
  scale: number;
  /** The dropout whose mask multiplies the LoRA term, keyed by output index. */
  dropout: FusedDropout | null;
}

/** A GEMM request: C = alpha · op(A) · op(B) (+ LoRA term) (+ bias), batched. */
export interface GemmRequest {
  a: GemmOperand;
  b: GemmOperand;
  m: number;
  n: number;
  k: number;
  batch?: number;
  alpha?: number;
  /** The dropout applied to the operand flagged `masked`. */
  dropout?: FusedDropout | null;
  lora?: LoraPhase;
  /** Bias [n] added to every row, in the output type. */
  bias?: Binding | null;
  outType: WgslType;
  /** Names the op and result for size-limit errors. */
  what: string;
}

/** What a GEMM kernel is specialised on besides its tile (see wgsl/gemm/direct.wgsl for the meanings). */
export interface GemmFlags {
  aType: WgslType;
  bType: WgslType;
  cType: WgslType;
  transA: boolean;
  transB: boolean;
  vecA: boolean;
  vecB: boolean;
  vecC: boolean;
  maskA: boolean;
  maskB: boolean;
  /** The LoRA phase's vec4 flags and output mask, or null without one. */
  lora: { vecP: boolean; vecQ: boolean; mask: boolean; qType?: WgslType } | null;
  bias: boolean;
  /** B's quantization scheme; "" or absent when B is plain. */
  quantB?: "" | WeightQuant["scheme"];
}

/** Template parameters of a GEMM kernel; `swizzle`: {@link GemmProfile.slabSwizzle}. */
export function gemmSpecialisation(f: GemmFlags, t: GemmTile, swizzle = false): TemplateParams {
  return {
    A_T: f.aType,
    B_T: f.bType,
    C_T: f.cType,
    TRANS_A: f.transA,
    TRANS_B: f.transB,
    VEC_A: f.vecA,
    VEC_B: f.vecB,
    VEC_C: f.vecC,
    MASK_A: f.maskA,
    MASK_B: f.maskB,
    LORA: f.lora !== null,
    VEC_P: f.lora?.vecP ?? false,
    VEC_Q: f.lora?.vecQ ?? false,
    Q_T: f.lora?.qType ?? f.bType,
    MASK: f.lora?.mask ?? false,
    BIAS: f.bias,
    QUANT_B: f.quantB ?? "",
    ...t,
    SWIZZLE: swizzle,
    STREAM_K: false,
    // One product per dispatch; recordGemmPair sets it (wgsl/gemm/pair.wgsl).
    PAIR: false,
    // Direct schedule: k lanes per block, whether they are the fast index of an invocation's id (A stored
    // [m, k]: a block's lanes read consecutive k of its rows) or the slow one (A stored [k, m]: consecutive
    // blocks read consecutive columns), and the vec4s per invocation each round of their sum stages in
    // workgroup memory (16 KiB a round).
    KL: t.KL ?? 1,
    LANE_FAST: !f.transA,
    CH: Math.max(1, Math.min((t.TM * t.TN) / 4, Math.floor(1024 / t.WG))),
    // Staging vec4s per invocation of the tiled kernel (unused by the direct one).
    LA: Math.max(1, (t.BM * t.BK) / 4 / t.WG),
    LB: Math.max(1, (t.BN * t.BK) / 4 / t.WG),
  };
}

/** The flags of a request: vec4 access wherever an operand's contiguous dimension is a multiple of 4. */
function requestFlags(req: GemmRequestShape, cType: WgslType): GemmFlags {
  const { a, b, m, n, k, lora } = req;
  return {
    aType: a.type,
    bType: b.type,
    cType,
    transA: a.trans,
    transB: b.trans,
    vecA: (a.trans ? m : k) % 4 === 0,
    vecB: (b.trans ? k : n) % 4 === 0,
    vecC: n % 4 === 0,
    maskA: a.masked === true,
    maskB: b.masked === true,
    lora: lora === undefined ? null : {
      vecP: lora.r % 4 === 0,
      vecQ: (b.trans ? lora.r : n) % 4 === 0,
      mask: lora.dropout !== null,
      qType: lora.qType ?? b.type,
    },
    bias: req.bias != null,
    quantB: b.quant?.scheme ?? "",
  };
}

/** The shape of a GEMM request: everything {@link planRequest} reads (no buffers). */
export type GemmRequestShape = Omit<GemmRequest, "a" | "b" | "lora" | "bias" | "what"> & {
  a: Omit<GemmOperand, "bind">;
  b: Omit<GemmOperand, "bind">;
  lora?: Omit<LoraPhase, "p" | "q">;
  bias?: unknown;
};

/** The flags and plan of a request on `profile`: what {@link recordGemm} dispatches. */
export function planRequest(
  req: GemmRequestShape,
  profile: GemmProfile,
  maxBindingBytes: number,
): { flags: GemmFlags; plan: GemmPlan } {
  const flags = requestFlags(req, req.outType);
  const plan = planGemm({
    m: req.m,
    n: req.n,
    k: req.k,
    batch: req.batch ?? 1,
    // A split product's bias is added by its reduce (SPLITK_REDUCE_BIAS), its LoRA term by its first
    // slice alone (the templates' LoRA phase); the planner leaves LoRA products whole unless told.
    splittable: true,
    lora: req.lora !== undefined,
    maxBindingBytes,
    vec4Unmasked: flags.vecA && flags.vecB && !flags.maskA && !flags.maskB &&
      (flags.lora === null || (flags.lora.vecP && flags.lora.vecQ && !flags.lora.mask)),
    transA: flags.transA,
    transB: flags.transB,
  }, profile);
  return { flags, plan };
}

/**
 * The pipelines (record and specialisation) a request compiles: the schedule's GEMM template and, when
 * k is split, the reduce. Tests of the pipeline cache predict its contents with this.
 */
export function requestPipelines(
  req: GemmRequestShape,
  profile: GemmProfile,
  maxBindingBytes: number,
): [KernelTemplate, TemplateParams][] {
  const { flags, plan } = planRequest(req, profile, maxBindingBytes);
  const template = SCHEDULE_TEMPLATE[plan.schedule];
  const swizzle = profile.slabSwizzle === true;
  if (plan.streamK > 0) {
    return [
      [GEMM_TILED_STREAM_K, { ...gemmSpecialisation(flags, plan.tile, swizzle), STREAM_K: true }],
      [STREAM_K_FIXUP, fixupSpecialisation(flags, plan.tile)],
    ];
  }
  if (plan.splits === 1) return [[template, gemmSpecialisation(flags, plan.tile, swizzle)]];
  const reduce = req.bias != null ? SPLITK_REDUCE_BIAS : SPLITK_REDUCE;
  return [
    [template, gemmSpecialisation({ ...flags, cType: "f32", bias: false }, plan.tile, swizzle)],
    [reduce, reduce.specialise([], splitReduceArgs(req, plan))],
  ];
}

/** The stream-K fix-up's specialisation: C's type, the tile, the bias and vec4 flags. */
function fixupSpecialisation(f: GemmFlags, t: GemmTile): TemplateParams {
  return { T: f.cType, BM: t.BM, BN: t.BN, WG: WORKGROUP_SIZE, BIAS: f.bias, VEC_C: f.vecC };
}

function splitReduceArgs(req: GemmRequestShape, plan: GemmPlan) {
  return { n: req.m * req.n, splits: plan.splits, alpha: req.alpha ?? 1, dtype: req.outType, cols: req.n };
}

/** The dispatch grid of `plan` for `zCount` batch entries or slices, folded onto x and y. */
function planGrid(rt: GpuRuntime, plan: GemmPlan, zCount: number): Grid {
  const groups = Math.ceil(plan.tiles / blocksPerWorkgroup(plan.schedule, plan.tile));
  const [x, y] = rt.fold(groups);
  return [x, y, zCount];
}

/** Records C = alpha · op(A) · op(B) (+ LoRA term, + bias) into a new buffer of batch·m·n `outType`. */
export function recordGemm(ctx: GemmContext, req: GemmRequest): Binding {
  const { rt, kernels } = ctx;
  const { a, b, m, n, k, outType, lora } = req;
  const batch = req.batch ?? 1;
  const alpha = req.alpha ?? 1;
  const outBytes = bufferBytes(batch * m * n, outType);
  const out = { buf: rt.alloc(outBytes, req.what), bytes: outBytes };
  if (batch * m * n === 0) return out;
  const { flags, plan } = planRequest(req, ctx.profile, rt.limits.maxStorageBufferBindingSize);
  const template = SCHEDULE_TEMPLATE[plan.schedule];
  const swizzle = ctx.profile.slabSwizzle === true;
  const dropout = dropoutParams(lora !== undefined ? lora.dropout : req.dropout ?? null);
  const streamKFields = {
    sk_groups: plan.streamK,
    sk_dp: plan.streamKWhole,
    sk_slabs: Math.ceil(k / plan.tile.BK),
  };
  const params = (
    zStrides: [number, number, number],
    kStart: number,
    kLen: number,
    zBase: number,
    al: number,
  ) =>
    packParams(plan.schedule === "tiled" ? GEMM_TILED_PARAMS : GEMM_PARAMS, {
      m,
      n,
      k,
      a_z_stride: zStrides[0],
      b_z_stride: zStrides[1],
      c_z_stride: zStrides[2],
      k_z_start: kStart,
      k_len: kLen,
      z_base: zBase,
      ...dropout,
      alpha: al,
      tiles_n: plan.tilesN,
      tiles: plan.tiles,
      r: lora?.r ?? 0,
      scale: lora?.scale ?? 1,
      q_block: b.quant?.block ?? 1,
      q_scale_off: b.quant?.codeWords ?? 0,
      ...(plan.schedule === "tiled" ? streamKFields : {}),
    }, req.what);
  const extra = [lora?.p ?? null, lora?.q ?? null, req.bias ?? null];
  // Only a detailed profile pays for this string: its rows are per GEMM shape and plan.
  const detail = rt.profilingDetail
    ? `${batch > 1 ? `${batch}x ` : ""}${m}x${n}x${k}${flags.transA ? " At" : ""}${
      flags.transB ? " Bt" : ""
    }${
      lora !== undefined ? ` lora r${lora.r}` : ""
    } ${plan.schedule} ${plan.tile.BM}x${plan.tile.BN}x${plan.tile.BK}${
      (plan.tile.KL ?? 1) > 1 ? ` lanes ${plan.tile.KL}` : ""
    } split ${plan.splits}${plan.streamK > 0 ? ` stream-K ${plan.streamK}` : ""} ${flags.aType}${
      flags.vecA && flags.vecB ? " vec4" : ""
    }`
    : undefined;
  if (plan.streamK > 0) {
    // Stream-K: plan.streamKWhole workgroups run whole tiles, then plan.streamK share the other tiles' k
    // slabs; runs covering part of a tile leave f32 partial tiles, which the fix-up sums into C with alpha
    // and the bias. (Off in every tuned table: slower on the H200, bench/NOTES.md, ninth session.)
    const partBytes = streamKPartBytes(plan.tile, plan.streamK);
    const part = { buf: rt.alloc(partBytes, `${req.what} (stream-K partial tiles)`), bytes: partBytes };
    const words = params([a.zStride ?? 0, b.zStride ?? 0, m * n], 0, k, 0, alpha);
    const grid = rt.fold(plan.streamKWhole + plan.streamK);
    rt.dispatch(
      kernels.get(GEMM_TILED_STREAM_K, { ...gemmSpecialisation(flags, plan.tile, swizzle), STREAM_K: true }),
      words,
      [a.bind, b.bind, ...extra, out, part],
      grid,
      detail,
    );
    rt.dispatch(
      kernels.get(STREAM_K_FIXUP, fixupSpecialisation(flags, plan.tile)),
      packParams(
        STREAM_K_FIXUP.params,
        { m, n, alpha, tiles_n: plan.tilesN, tiles: plan.tiles, ...streamKFields },
        req.what,
      ),
      [part, req.bias ?? null, out],
      rt.fold(plan.streamK),
      detail === undefined ? undefined : `${detail} fix-up`,
    );
    rt.release(part.buf);
    return out;
  }
  if (plan.splits === 1) {
    const kernel = kernels.get(template, gemmSpecialisation(flags, plan.tile, swizzle));
    const maxZ = rt.limits.maxComputeWorkgroupsPerDimension;
    const strides: [number, number, number] = [a.zStride ?? 0, b.zStride ?? 0, m * n];
    for (let z0 = 0; z0 < batch; z0 += maxZ) {
      const zCount = Math.min(maxZ, batch - z0);
      rt.dispatch(
        kernel,
        params(strides, 0, k, z0, alpha),
        [a.bind, b.bind, ...extra, out],
        planGrid(rt, plan, zCount),
        detail,
      );
    }
    return out;
  }
  // Split-K: slice z sums k in [z · chunk, (z + 1) · chunk) into its own partial product, then one kernel
  // adds the slices, applies alpha and adds the bias.
  const partBytes = bufferBytes(plan.splits * m * n, "f32");
  const part = { buf: rt.alloc(partBytes, `${req.what} (split-K partial sums)`), bytes: partBytes };
  const kernel = kernels.get(
    template,
    gemmSpecialisation({ ...flags, cType: "f32", bias: false }, plan.tile, swizzle),
  );
  rt.dispatch(
    kernel,
    params([0, 0, m * n], plan.chunk, plan.chunk, 0, 1),
    [a.bind, b.bind, extra[0], extra[1], null, part],
    planGrid(rt, plan, plan.splits),
    detail,
  );
  const reduceArgs = splitReduceArgs(req, plan);
  const reduce = req.bias != null ? SPLITK_REDUCE_BIAS : SPLITK_REDUCE;
  const words = req.bias != null
    ? packParams(SPLITK_REDUCE_BIAS.params, SPLITK_REDUCE_BIAS.uniforms(reduceArgs, []), req.what)
    : packParams(SPLITK_REDUCE.params, SPLITK_REDUCE.uniforms(reduceArgs, []), req.what);
  const geometry = reduce.geometry(reduceArgs, []);
  rt.dispatch(
    kernels.get(reduce, reduce.specialise([], reduceArgs)),
    words,
    req.bias != null ? [part, req.bias, out] : [part, out],
    "rows" in geometry ? rt.fold(geometry.rows) : rt.grid1d(geometry.elements, WORKGROUP_SIZE),
  );
  rt.release(part.buf);
  return out;
}

/**
 * Two products for {@link recordGemmPair}: C1 = alpha · op(A1) · op(B1) [m, n1] stored as usual, and
 * C2 = alpha · op(A2) · op(B2) [m, n2] stored transposed, as [n2, m]. Same m, k, alpha, layouts and
 * element types; no batch, LoRA phase, bias or quantized B; at most one of the two B operands masked (by
 * the one dropout given).
 */
export interface GemmPairRequest {
  first: Omit<GemmRequest, "lora" | "bias" | "batch">;
  second: Omit<GemmRequest, "lora" | "bias" | "batch">;
}

/** Why `req` cannot run as a pair (a message naming the mismatch), or null when it can. */
export function pairMismatch(req: GemmPairRequest): string | null {
  const { first: f, second: s } = req;
  const same: [string, unknown, unknown][] = [
    ["m", f.m, s.m],
    ["k", f.k, s.k],
    ["alpha", f.alpha ?? 1, s.alpha ?? 1],
    ["A's type", f.a.type, s.a.type],
    ["B's type", f.b.type, s.b.type],
    ["A's layout", f.a.trans, s.a.trans],
    ["B's layout", f.b.trans, s.b.trans],
    ["output type", f.outType, s.outType],
  ];
  for (const [what, x, y] of same) {
    if (x !== y) return `${what} differs (${x} against ${y})`;
  }
  if (f.m === 0 || f.k === 0 || f.n === 0 || s.n === 0) return "a product is empty";
  if (f.a.masked === true || s.a.masked === true) return "an A operand is masked (only B may be)";
  if (f.b.masked === true && s.b.masked === true) return "both B operands are masked (one dropout masks one)";
  if (f.b.quant != null || s.b.quant != null) return "a B operand is quantized";
  if (
    (f.a.zStride ?? 0) !== 0 || (s.a.zStride ?? 0) !== 0 || (f.b.zStride ?? 0) !== 0 ||
    (s.b.zStride ?? 0) !== 0
  ) {
    return "an operand is batched";
  }
  return null;
}

/**
 * Records two rank-wide products in one dispatch of the direct template with k lanes (`PAIR`,
 * wgsl/gemm/direct.wgsl) on `tile` (gemm_plan.ts pairTile): the workgroups at z = 0 compute the first,
 * those at z = 1 the second, stored transposed. Returns [C1 [m, n1], C2 [n2, m]] in the output type.
 * Each product sums in the order the same tile gives it alone.
 */
export function recordGemmPair(
  ctx: GemmContext,
  req: GemmPairRequest,
  tile: GemmTile,
): [Binding, Binding] {
  const mismatch = pairMismatch(req);
  if (mismatch !== null) {
    throw new ShapeError(`recordGemmPair: ${req.first.what} and ${req.second.what} cannot pair: ${mismatch}`);
  }
  if ((tile.KL ?? 1) < 2) {
    throw new ConfigError(
      `recordGemmPair: tile ${tile.TM}×${tile.TN} has no k lanes (gemm_plan.ts laneTile)`,
    );
  }
  const { rt, kernels } = ctx;
  const { first: f, second: s } = req;
  const { m, k, outType } = f;
  const alloc = (r: typeof f): Binding => {
    const bytes = bufferBytes(m * r.n, outType);
    return { buf: rt.alloc(bytes, r.what), bytes };
  };
  const c1 = alloc(f), c2 = alloc(s);
  const flags: GemmFlags = {
    ...requestFlags(f, outType),
    // The second's B shares the loaders, so vec4 access needs both widths to allow it; C2 is stored
    // element by element (transposed).
    vecB: f.b.trans ? k % 4 === 0 : f.n % 4 === 0 && s.n % 4 === 0,
    maskB: f.b.masked === true || s.b.masked === true,
  };
  const tilesN1 = Math.ceil(f.n / tile.BN), tilesN2 = Math.ceil(s.n / tile.BN);
  const rowBlocks = Math.ceil(m / tile.BM);
  const tiles1 = rowBlocks * tilesN1, tiles2 = rowBlocks * tilesN2;
  const dropout = dropoutParams(f.dropout ?? s.dropout ?? null);
  const words = packParams(GEMM_PAIR_PARAMS, {
    m,
    n: f.n,
    k,
    a_z_stride: 0,
    b_z_stride: 0,
    c_z_stride: 0,
    k_z_start: 0,
    k_len: k,
    z_base: 0,
    ...dropout,
    alpha: f.alpha ?? 1,
    tiles_n: tilesN1,
    tiles: tiles1,
    r: 0,
    scale: 1,
    q_block: 1,
    q_scale_off: 0,
    n2: s.n,
    tiles_n2: tilesN2,
    tiles2,
    pair_mask: f.b.masked === true ? 1 : s.b.masked === true ? 2 : 0,
  }, `${f.what} + ${s.what}`);
  const spec = { ...gemmSpecialisation(flags, tile), PAIR: true };
  const detail = rt.profilingDetail
    ? `pair ${m}x${f.n}+${s.n}x${k}${flags.transA ? " At" : ""}${
      flags.transB ? " Bt" : ""
    } direct ${tile.TM}x${tile.TN} lanes ${tile.KL} ${flags.aType}`
    : undefined;
  const [x, y] = rt.fold(Math.ceil(Math.max(tiles1, tiles2) / blocksPerWorkgroup("direct", tile)));
  rt.dispatch(
    kernels.get(GEMM_DIRECT_PAIR, spec),
    words,
    [f.a.bind, f.b.bind, s.a.bind, s.b.bind, null, c1, c2],
    [x, y, 2],
    detail,
  );
  return [c1, c2];
}
