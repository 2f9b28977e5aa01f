/**
 * GEMM schedules and how a product of a given shape is cut into dispatches: which kernel (workgroup-tiled
 * for hardware GPUs, direct for software adapters), which tile, how many k slices. Pure functions of the
 * shape and the device class, so the choice is made the same way every time and never changes results
 * beyond rounding (each slice and tile computes the same sums).
 * @module
 */
import { ConfigError } from "../../core/errors.ts";

/**
 * `tiled`: workgroup tiles staged in workgroup memory (wgsl/gemm/tiled.wgsl), for hardware GPUs.
 * `direct`: each invocation reads its block straight from storage, no barriers (wgsl/gemm/direct.wgsl), for
 * software adapters, where barriers and per-invocation loads are costly (bench/NOTES.md).
 */
export type GemmSchedule = "tiled" | "direct";

/**
 * One tile configuration. Tiled: a workgroup of WG invocations computes BM × BN outputs in BK-deep slabs,
 * TM × TN per invocation. Direct: each of WG invocations computes TM × TN outputs (BM = TM, BN = TN).
 */
export interface GemmTile {
  BM: number;
  BN: number;
  BK: number;
  TM: number;
  TN: number;
  WG: number;
  /**
   * Workgroup slab buffers of the tiled schedule: 2 double-buffers (the next slab is fetched into
   * registers while the current one is multiplied, one barrier per slab); 1 stages each slab straight
   * through, two barriers per slab, and holds no staging registers over the multiply. Direct: 1, unused.
   */
  STAGES: number;
  /**
   * Direct schedule only: invocations sharing one TM × TN block (default 1), each summing every KL-th
   * group of 4 k, their partial sums then added in workgroup memory (wgsl/gemm/direct.wgsl). For the
   * rank-wide products of LoRA on hardware GPUs ({@link laneTile}).
   */
  KL?: number;
}

/**
 * A tiled configuration; every invocation stages whole vec4s of both slabs (wgsl/gemm/tiled.wgsl), in
 * `stages` workgroup buffers ({@link GemmTile.STAGES}, default 2).
 */
export function tiledTile(
  BM: number,
  BN: number,
  BK: number,
  TM: number,
  TN: number,
  stages = 2,
): GemmTile {
  const WG = (BM / TM) * (BN / TN);
  if ((BM * BK / 4) % WG !== 0 || (BN * BK / 4) % WG !== 0 || TM % 4 !== 0 || TN % 4 !== 0 || BK % 4 !== 0) {
    throw new ConfigError(
      `tiledTile: ${BM}×${BN}×${BK} with ${TM}×${TN} per invocation does not stage evenly`,
    );
  }
  if (stages !== 1 && stages !== 2) {
    throw new ConfigError(`tiledTile: ${BM}×${BN}×${BK} with ${stages} slab buffers (1 or 2 are built)`);
  }
  return { BM, BN, BK, TM, TN, WG, STAGES: stages };
}

function directTile(TM: number, TN: number, WG: number): GemmTile {
  return { BM: TM, BN: TN, BK: 4, TM, TN, WG, STAGES: 1 };
}

/**
 * A direct-schedule tile whose TM × TN block is summed by `lanes` invocations ({@link GemmTile.KL}), WG of
 * them per workgroup. Made for the products one of whose sides is a LoRA rank (x·Aᵀ, dy·B, dA, dB): the
 * tiled schedule gives those 64-128 invocations per workgroup and needs split-K and a second dispatch to
 * keep a large GPU busy, where k lanes put hundreds of invocations on one block in one dispatch.
 */
export function laneTile(TM: number, TN: number, lanes: number, WG = 256): GemmTile {
  if (TM % 4 !== 0 || TN % 4 !== 0 || lanes < 2 || (lanes & (lanes - 1)) !== 0 || WG % lanes !== 0) {
    throw new ConfigError(
      `laneTile: ${TM}×${TN} per block with ${lanes} k lanes in ${WG} invocations (TM and TN multiples of 4, ` +
        `lanes a power of two from 2 dividing the workgroup)`,
    );
  }
  return { ...directTile(TM, TN, WG), KL: lanes };
}

/** Blocks one workgroup of `t` computes: WG / KL on the direct schedule, 1 on the tiled one. */
export function blocksPerWorkgroup(schedule: GemmSchedule, t: GemmTile): number {
  return schedule === "tiled" ? 1 : t.WG / (t.KL ?? 1);
}

/** A plan fixed from outside the heuristics (a tuned table, or the tuner trying one). */
export interface GemmChoice {
  /** The schedule the tile belongs to when not the profile's (a {@link laneTile} on a tiled profile). */
  schedule?: GemmSchedule;
  tile: GemmTile;
  /** k slices wanted (1: no split); reduced like any plan's to fit the partial sums into a binding. */
  splits: number;
  /**
   * Stream-K workgroups ({@link GemmPlan.streamK}) for this shape, overriding the profile's
   * {@link GemmProfile.streamK}; 0 turns stream-K off for it.
   */
  streamK?: number;
}

/** The tile configurations a device uses for one schedule, largest first. */
export interface GemmProfile {
  schedule: GemmSchedule;
  tiles: readonly GemmTile[];
  /**
   * A choice for one shape that overrides the heuristics (undefined: plan as usual). Its tile must be
   * one the schedule's template takes; a split is ignored where the shape may not be split.
   */
  choose?: (shape: GemmShape) => GemmChoice | undefined;
  /**
   * Tiled schedule: swizzle the slabs' vec4 slots in every second group of 8 kk rows, which makes BK 16's
   * transposed staging stores free of bank conflicts (wgsl/gemm/tiled.wgsl). Same results either way; which
   * is faster depends on the WebGPU implementation's compiler (a tuned table's choice). Default off.
   */
  slabSwizzle?: boolean;
  /**
   * Tiled schedule: the workgroups a stream-K plan runs ({@link GemmPlan.streamK}), as many as the GPU
   * holds at once (two 256-invocation workgroups per multiprocessor: 264 on an H200). Products on the
   * profile's first (largest) tile use it where a whole-tile grid would lose at least
   * {@link STREAM_K_MIN_LOSS} of its time to a part-full last wave. Absent: no stream-K. A tuned table's choice (GemmChoice.streamK)
   * overrides it per shape.
   */
  streamK?: number;
  /**
   * Pairs of rank-wide products in one dispatch (webgpu/gemm.ts recordGemmPair): the lane tile they share,
   * or false to record them apart. Absent: {@link pairTile}'s choice on the tiled schedule (hardware
   * GPUs), apart on the direct one.
   */
  pair?: GemmTile | false;
}

/**
 * The lane tile a pair of products of `m` rows and depth `k` shares in one dispatch
 * ({@link GemmProfile.pair}), or null to record them apart. On hardware GPUs only, for m up to 64 (the
 * LoRA backward's dA = gᵀ·x and dBᵀ = tᵀ·dy, m the rank) and k (the tokens) up to 4,096: each such product
 * alone is bound by a dispatch's fixed cost (on Dawn on the H200 a product of twice the width took 0.018
 * ms against 0.016), while deeper ones run long enough that a pair's serial lane loop (k / (4 · lanes)
 * steps) loses to split-K (at 8,192 tokens the pair made the step 0.8% slower). The block is 8 rows by 4
 * columns (two row blocks at rank 16 beat one of 16 rows by 1-2%), the lanes k / 32 clamped to 16-64:
 * the best of the tiles swept on the H200 (bench/NOTES.md, twelfth session).
 */
export function pairTile(m: number, k: number, profile: GemmProfile): GemmTile | null {
  if (profile.pair === false) return null;
  if (profile.pair !== undefined) return profile.pair;
  if (profile.schedule !== "tiled" || m > 64 || k > 4096) return null;
  const lanes = Math.min(64, Math.max(16, 2 ** Math.floor(Math.log2(Math.max(1, k / 32)))));
  return laneTile(Math.min(8, Math.ceil(m / 4) * 4), 4, lanes);
}

/**
 * The least share of a whole-tile grid's time lost to its partly filled last wave that makes a stream-K
 * plan worth its fix-up pass: at 4096³ on 128 × 128 tiles an H200 runs 1,024 tiles in 4 waves of 264, the
 * last 88% full, 3% of the time idle (bench/NOTES.md, eighth session), while the fix-up was estimated at about 0.5% (on
 * the H200 the stream-K kernel turned out slower per tile than the plain one: ninth session).
 */
export const STREAM_K_MIN_LOSS = 0.02;

/**
 * Whether `tiles` whole tiles on `groups` concurrent workgroups lose at least {@link STREAM_K_MIN_LOSS} of
 * their time to the last wave: (ceil(w) - w) / ceil(w) for w = tiles / groups waves. Fewer tiles than
 * workgroups are left alone (stream-K would split every tile).
 */
export function streamKPays(tiles: number, groups: number): boolean {
  if (groups < 2 || tiles <= groups) return false;
  const waves = tiles / groups;
  return (Math.ceil(waves) - waves) / Math.ceil(waves) >= STREAM_K_MIN_LOSS;
}

/**
 * Hardware GPUs: 128 × 128 workgroup tiles (26 TFLOP/s f32 on an H200, bench/NOTES.md), 64 × 64 for small
 * products, 32 × 128 for products of a few dozen rows (the chunked loss's 32-row logits and d-hidden
 * products, which a 16-row tile reads the vocabulary-sized operand twice for), and 128 × 16 / 16 × 128 for
 * the products one of whose sides is a LoRA rank (x·Aᵀ, dy·B, dA, dB), which a square tile would mostly pad.
 */
export const TILED_PROFILE: GemmProfile = {
  schedule: "tiled",
  tiles: [
    tiledTile(128, 128, 8, 8, 8),
    tiledTile(64, 64, 16, 4, 4),
    tiledTile(32, 128, 16, 4, 8),
    tiledTile(128, 16, 16, 8, 4),
    tiledTile(16, 128, 16, 4, 8),
  ],
};

/**
 * Software adapters: the larger the block per invocation the fewer loads per FMA (bench/NOTES.md), so
 * 32 × 32, or 32 × 16 / 16 × 32 for the rank-wide products of LoRA; 4 × 8 for small products, for
 * operands without vec4 access and for dropout-masked operands. A software adapter compiles a kernel when
 * it first runs it, in time that grows faster than the unrolled block (about 1 s for 16 × 16, 5 s for
 * 32 × 32 on a 2-core machine): the large blocks are kept to the kernels that gain most from them.
 */
export const DIRECT_PROFILE: GemmProfile = {
  schedule: "direct",
  tiles: [
    directTile(32, 32, 8),
    directTile(32, 16, 8),
    directTile(16, 32, 8),
    directTile(16, 16, 8),
    directTile(4, 8, 8),
  ],
};

/** CPU threads a software adapter spreads workgroups over (lavapipe uses one per core). */
const CPU_THREADS = Math.max(1, (globalThis.navigator as Navigator | undefined)?.hardwareConcurrency ?? 4);

/**
 * Invocations a tiled GEMM wants in flight before it splits k: two 256-invocation workgroups per
 * multiprocessor of a large GPU (an H200 has 132). Counting invocations rather than workgroups matters for
 * the narrow tiles (64 or 128 invocations): the chunked loss's d-hidden product (32 rows, 2,048 columns,
 * k = the vocabulary) made 16 workgroups of 128 invocations, and split only to 128 workgroups in all, one
 * per multiprocessor at a quarter of its lanes (bench/NOTES.md, issue 15).
 */
const TILED_WANTED_INVOCATIONS = 1 << 16;

/**
 * Work units a GEMM wants before it splits k (tiled: invocations of its workgroups; direct: invocations,
 * one block each): see {@link TILED_WANTED_INVOCATIONS}; a software adapter, a few SIMD registers of
 * lanes per CPU thread.
 */
function wantedUnits(schedule: GemmSchedule, cpuThreads: number): number {
  return schedule === "tiled" ? TILED_WANTED_INVOCATIONS : Math.max(64, 32 * cpuThreads);
}

/** Below this many multiply-adds a product takes the smallest tile: a larger one would not pay. */
const SMALL_WORK = { tiled: 1 << 24, direct: 1 << 22 } as const;

/** How one GEMM runs: the tile, the schedule and the k slices (1: no split). */
export interface GemmPlan {
  schedule: GemmSchedule;
  tile: GemmTile;
  /** Number of k slices (partial products summed by wgsl/gemm/splitk_reduce.wgsl); 1 = no split. */
  splits: number;
  /** k per slice (a multiple of 4 and of BK); k itself when not split. */
  chunk: number;
  /** Column blocks and all blocks of one batch entry. */
  tilesN: number;
  tiles: number;
  /**
   * Stream-K (tiled schedule, unsplit, one batch entry): after {@link GemmPlan.streamKWhole} whole tiles,
   * this many workgroups share the remaining tiles' k-slab iterations evenly, a contiguous run each, so
   * the last wave runs full; a tile whose slabs two or more workgroups share is summed from their f32
   * partial tiles by a fix-up pass (wgsl/gemm/stream_k_fixup.wgsl). 0: one workgroup per tile.
   */
  streamK: number;
  /**
   * Stream-K plans: the tiles run whole first, one workgroup each, in full waves of {@link streamK}:
   * all but the last one to two waves' worth, which the stream-K workgroups share (1 to 2 tiles each).
   * (The stream-K paper's hybrid, against the L2 reuse stream-K workgroups at different k lose. On the
   * H200 it did not help: the STREAM_K kernel itself ran 8% slower per tile than the plain one on Deno's
   * WebGPU and 32% on Dawn, so no tuned table turns stream-K on; bench/NOTES.md, ninth session.)
   */
  streamKWhole: number;
}

/** The shape of a GEMM to plan: op(A) [m, k] · op(B) [k, n], `batch` times. */
export interface GemmShape {
  m: number;
  n: number;
  k: number;
  batch: number;
  /** Whether k may be split (not for the LoRA output kernel, whose epilogue must run once). */
  splittable: boolean;
  /** Largest binding in bytes, which bounds the split-K partial sums. */
  maxBindingBytes: number;
  /** Every operand is read as vec4 (its contiguous dimension a multiple of 4) and none is masked. */
  vec4Unmasked: boolean;
  /**
   * The LoRA output kernel. It plans as a plain product: k may be split (only the first slice takes the
   * LoRA term, the reduce adds the bias). Kept for {@link GemmProfile.choose} and the tuner's tables;
   * the H200 measured 512 x 4096 x 4096 + LoRA r16 1.44x faster on the base product's 128 x 128 tile with
   * 2 slices than on the unsplit 64 x 64 tile the heuristics took while they left LoRA kernels whole
   * (bench/NOTES.md, issue 15).
   */
  lora?: boolean;
  /** Which operands are stored transposed (for {@link GemmProfile.choose}; the heuristics ignore it). */
  transA?: boolean;
  transB?: boolean;
}

function blocks(shape: GemmShape, t: GemmTile): { tilesN: number; tiles: number } {
  const tilesN = Math.ceil(shape.n / t.BN);
  return { tilesN, tiles: Math.ceil(shape.m / t.BM) * tilesN };
}

/**
 * Slices that bring `have` units up to `want`, each at least 64 deep; `strict`: 0 when that many slices
 * would be too shallow, else as many as k allows.
 */
function slicesFor(shape: GemmShape, have: number, want: number, strict: boolean): number {
  if (have >= want) return 1;
  if (!shape.splittable || shape.batch !== 1) return strict ? 0 : 1;
  const splits = Math.min(Math.ceil(want / have), 64);
  if (shape.k >= 64 * splits) return splits;
  return strict ? 0 : Math.max(1, Math.floor(shape.k / 64));
}

function finish(shape: GemmShape, schedule: GemmSchedule, tile: GemmTile, wanted: number): GemmPlan {
  const { m, n, k } = shape;
  const { tilesN, tiles } = blocks(shape, tile);
  let splits = Math.max(1, wanted);
  while (splits > 1 && splits * m * n * 4 > shape.maxBindingBytes) splits = Math.floor(splits / 2);
  if (splits === 1) return { schedule, tile, splits, chunk: k, tilesN, tiles, streamK: 0, streamKWhole: 0 };
  const step = Math.max(4, tile.BK);
  const chunk = Math.ceil(Math.ceil(k / splits) / step) * step;
  return { schedule, tile, splits: Math.ceil(k / chunk), chunk, tilesN, tiles, streamK: 0, streamKWhole: 0 };
}

/** Whether two tiles have the same dimensions, schedule parameters and lanes (tables make fresh objects). */
function sameTile(a: GemmTile, b: GemmTile): boolean {
  return a.BM === b.BM && a.BN === b.BN && a.BK === b.BK && a.TM === b.TM && a.TN === b.TN && a.WG === b.WG &&
    a.STAGES === b.STAGES && (a.KL ?? 1) === (b.KL ?? 1);
}

/** Bytes of a stream-K plan's partial tiles: two f32 tiles per workgroup (its first and last runs). */
export function streamKPartBytes(tile: GemmTile, groups: number): number {
  return 2 * groups * tile.BM * tile.BN * 4;
}

/**
 * `plan` as a stream-K plan on `groups` workgroups where that is possible: the tiled schedule, no split,
 * one batch entry, more tiles than workgroups, the partial tiles within a binding, and every iteration
 * index (groups · tiles · slabs) within the kernel's 32-bit arithmetic.
 */
function withStreamK(shape: GemmShape, plan: GemmPlan, groups: number): GemmPlan {
  if (plan.schedule !== "tiled" || plan.splits !== 1 || shape.batch !== 1 || plan.tiles <= groups) {
    return plan;
  }
  if (streamKPartBytes(plan.tile, groups) > shape.maxBindingBytes) return plan;
  if ((groups + 1) * plan.tiles * Math.ceil(shape.k / plan.tile.BK) >= 2 ** 32) return plan;
  const whole = Math.max(0, Math.floor(plan.tiles / groups) - 1) * groups;
  return { ...plan, streamK: groups, streamKWhole: whole };
}

/**
 * Plans a GEMM: small products (and, on the direct schedule, ones without vec4 access or with a masked
 * operand) take the smallest tile; others the first tile of the profile that fits the product and keeps
 * the device busy, by itself or with k split into slices at least 64 deep. Whatever the tile, k is split
 * when the device would otherwise idle and k allows it.
 */
export function planGemm(shape: GemmShape, profile: GemmProfile, cpuThreads = CPU_THREADS): GemmPlan {
  const { schedule, tiles } = profile;
  const chosen = profile.choose?.(shape);
  if (chosen !== undefined) {
    const splits = shape.splittable && shape.batch === 1
      ? Math.max(1, Math.min(chosen.splits, Math.floor(shape.k / Math.max(4, chosen.tile.BK)), 64))
      : 1;
    const plan = finish(shape, chosen.schedule ?? schedule, chosen.tile, splits);
    const groups = chosen.streamK ??
      (sameTile(chosen.tile, tiles[0]) && profile.streamK !== undefined &&
          streamKPays(plan.tiles, profile.streamK)
        ? profile.streamK
        : 0);
    return groups > 0 ? withStreamK(shape, plan, groups) : plan;
  }
  const want = wantedUnits(schedule, cpuThreads);
  const units = (t: GemmTile) => blocks(shape, t).tiles * shape.batch * (schedule === "tiled" ? t.WG : 1);
  const area = (t: GemmTile) => t.BM * t.BN;
  // A tile fits when its block does not overhang m or n by more than padding to 4 (to 16 for workgroup
  // tiles, whose narrowest side is 16). A narrow workgroup tile (a side under 64) is only for products
  // that narrow; a direct tile must leave a full SIMD register of lanes (8) per batch entry or slice.
  const floor = schedule === "tiled" ? 16 : 4;
  const pad = (d: number) => Math.max(floor, Math.ceil(d / 4) * 4);
  const narrowOk = (side: number, d: number) => side >= 64 || side >= pad(d);
  const fits = (t: GemmTile) =>
    t.BM <= pad(shape.m) && t.BN <= pad(shape.n) &&
    (schedule === "tiled" ? narrowOk(t.BM, shape.m) && narrowOk(t.BN, shape.n) : blocks(shape, t).tiles >= 8);
  const fitting = tiles.filter(fits);
  const pool = fitting.length > 0 ? fitting : tiles;
  const small = shape.m * shape.n * shape.k * shape.batch < SMALL_WORK[schedule];
  // The fallback tile. Direct: the smallest. Tiled: the one that pads the output least (by area alone, a
  // 32-row product took the 128 × 16 tile and computed four times its rows), then the smallest for small
  // products (more workgroups) and the largest for others (the operands read fewer times).
  const padded = (t: GemmTile) =>
    schedule === "tiled" ? Math.ceil(shape.m / t.BM) * t.BM * Math.ceil(shape.n / t.BN) * t.BN : 0;
  const better = (b: GemmTile, a: GemmTile) =>
    padded(b) < padded(a) ||
    (padded(b) === padded(a) && (schedule === "direct" || small ? area(b) < area(a) : area(b) > area(a)));
  const smallest = pool.reduce((a, b) => (better(b, a) ? b : a));
  const loose = (t: GemmTile) => finish(shape, schedule, t, slicesFor(shape, units(t), want, false));
  if (schedule === "direct" && (small || !shape.vec4Unmasked)) return loose(tiles[tiles.length - 1]);
  if (small) return loose(smallest);
  for (const tile of fitting) {
    const splits = slicesFor(shape, units(tile), want, true);
    if (splits === 0) continue;
    const plan = finish(shape, schedule, tile, splits);
    const groups = profile.streamK;
    if (tile === tiles[0] && groups !== undefined && streamKPays(plan.tiles, groups)) {
      return withStreamK(shape, plan, groups);
    }
    return plan;
  }
  return loose(smallest);
}
