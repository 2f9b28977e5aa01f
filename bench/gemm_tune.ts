/**
 * GEMM plan tuner: for each GEMM shape, times the planner's own choice and every candidate workgroup tile
 * × k-split on this adapter (GPU timestamps when the adapter has them, else wall-clock), checks the best
 * against the planner's result, and prints the table and a TS table the planner can take
 * (`GemmProfile.choose`). Shapes: the GEMMs of a Llama-3.2-1B LoRA training step at 4 × 512 tokens
 * (`--shapes llama`), of the fused LoRA linear at the bench's sizes (`--shapes lora`), a square 4096³, or
 * `m,n,k,layout[,lora r]` lists (`--shapes 32,2048,128256,NN;2048,16,2048,NT`; layout NN / NT / TN / TT
 * says which operand is stored transposed).
 *
 * Also `--lora-profile M,D,r`: one fused LoRA forward + backward at that size under a detailed profile
 * (GPU time per GEMM shape and plan), to find which kernel of the fused op an implementation is slow at.
 *
 * Usage: deno run -A bench/gemm_tune.ts [--dawn [--dawn-toggles a,b]] [--shapes llama|lora|square|LIST]
 *        [--dtype f32|f16] [--budget-s 40] [--lora-profile 8192,4096,16] [--tiny]
 *        [--stream-k 264,528] (also time stream-K plans on that many workgroups: GemmPlan.streamK)
 * @module
 */
import type { WebGpuBackend } from "../src/backend/webgpu/backend.ts";
import { bufferBytes, type GemmRequest, planRequest, type WgslType } from "../src/backend/webgpu/gemm.ts";
import { recordGemm } from "../src/backend/webgpu/gemm.ts";
import {
  type GemmChoice,
  type GemmProfile,
  type GemmSchedule,
  type GemmTile,
  laneTile,
  TILED_PROFILE,
  tiledTile,
} from "../src/backend/webgpu/gemm_plan.ts";
import { PipelineCache } from "../src/backend/webgpu/pipelines.ts";
import type { GpuBuffer, GpuRuntime } from "../src/backend/webgpu/runtime.ts";
import { f16BitsToNumber, numberToF16Bits } from "../src/core/half.ts";
import type { Device } from "../mod.ts";
import { argValue, benchDevice, implementationName } from "./bench_device.ts";

/** One GEMM to tune: C [m, n] = op(A) [m, k] · op(B) [k, n] (+ a LoRA phase of rank `lora`). */
export interface TuneShape {
  name: string;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  /** Rank of the LoRA pre-phase (the fused linear's output kernels), or 0. */
  lora: number;
}

const shape = (name: string, m: number, n: number, k: number, layout: string, lora = 0): TuneShape => ({
  name,
  m,
  n,
  k,
  transA: layout[0] === "T",
  transB: layout[1] === "T",
  lora,
});

/**
 * The GEMMs of one Llama-3.2-1B LoRA training step at 4 × 512 tokens (hidden 2048, intermediate 8192, 8
 * KV heads of 64, vocab 128256, r 16 on all seven projections, the chunked loss at 32 rows a chunk), each
 * distinct shape once, with how many the step runs.
 */
export function llamaShapes(tokens = 2048, r = 16): TuneShape[] {
  const H = 2048, I = 8192, KV = 512, V = 128256, rows = Math.floor((1 << 22) / V);
  return [
    shape("loss dh = dl·E (x64 fwd+bwd)", rows, H, V, "NN"),
    shape("loss logits = h·Eᵀ (x128)", rows, V, H, "NT"),
    shape("q/o out (x32)", tokens, H, H, "NT", r),
    shape("k/v out (x32)", tokens, KV, H, "NT", r),
    shape("gate/up out (x32)", tokens, I, H, "NT", r),
    shape("down out (x16)", tokens, H, I, "NT", r),
    shape("q/o dx (x32)", tokens, H, H, "NN", r),
    shape("k/v dx (x32)", tokens, H, KV, "NN", r),
    shape("gate/up dx (x32)", tokens, H, I, "NN", r),
    shape("down dx (x16)", tokens, I, H, "NN", r),
    shape("t = x·Aᵀ, in 2048 (x144)", tokens, r, H, "NT"),
    shape("t = x·Aᵀ, in 8192 (x32)", tokens, r, I, "NT"),
    shape("g = dy·B, out 2048 (x48)", tokens, r, H, "NN"),
    shape("g = dy·B, out 512 (x32)", tokens, r, KV, "NN"),
    shape("g = dy·B, out 8192 (x32)", tokens, r, I, "NN"),
    shape("dA = gᵀ·x, in 2048 (x96)", r, H, tokens, "TN"),
    shape("dA = gᵀ·x, in 8192 (x16)", r, I, tokens, "TN"),
    shape("dB = dyᵀ·t, out 2048 (x48)", H, r, tokens, "TN"),
    shape("dB = dyᵀ·t, out 512 (x32)", KV, r, tokens, "TN"),
    shape("dB = dyᵀ·t, out 8192 (x32)", I, r, tokens, "TN"),
  ];
}

/** The GEMMs of the fused LoRA linear's forward and backward at (M, D, r) (bench/lora_bench.ts). */
export function loraShapes(M: number, D: number, r: number): TuneShape[] {
  const s = `(${M}, ${D}, ${r})`;
  return [
    shape(`${s} t = x·Aᵀ`, M, r, D, "NT"),
    shape(`${s} y = x·Wᵀ + LoRA`, M, D, D, "NT", r),
    shape(`${s} g = dy·B`, M, r, D, "NN"),
    shape(`${s} dx = dy·W + LoRA`, M, D, D, "NN", r),
    shape(`${s} dA = gᵀ·x`, r, D, M, "TN"),
    shape(`${s} dB = dyᵀ·t`, D, r, M, "TN"),
  ];
}

/** Candidate workgroup tiles beyond the planner's own: BM, BN, BK, TM, TN[, slab buffers (default 2)]. */
const EXTRA_TILES: readonly (readonly number[])[] = [
  [128, 128, 16, 8, 8],
  [128, 128, 16, 8, 8, 1],
  [128, 128, 32, 8, 8, 1],
  [128, 64, 8, 8, 8],
  [64, 128, 8, 8, 8],
  [128, 32, 16, 8, 4],
  [128, 256, 8, 8, 16],
  // Rank-wide products with 4 × 4 per invocation and BK 32: twice the invocations of the profile's
  // 128 × 16 / 16 × 128 tiles (whose 64 invocations leave an H200's multiprocessors nearly empty), each
  // slab deep enough that every invocation stages whole vec4s of both operands.
  [128, 16, 32, 4, 4],
  [16, 128, 32, 4, 4],
  [128, 32, 32, 4, 4],
];

/** The candidate tiles this device can run: the planner's and {@link EXTRA_TILES}. */
export function candidateTiles(gpu: GPUDevice): GemmTile[] {
  const out: GemmTile[] = [...TILED_PROFILE.tiles];
  for (const [BM, BN, BK, TM, TN, stages = 2] of EXTRA_TILES) {
    let t: GemmTile;
    try {
      t = tiledTile(BM, BN, BK, TM, TN, stages);
    } catch {
      continue;
    }
    if (t.WG > gpu.limits.maxComputeInvocationsPerWorkgroup) continue;
    // Each kk row of a slab carries one vec4 of padding (wgsl/gemm/tiled.wgsl).
    if (stages * BK * (BM + BN + 8) * 4 > gpu.limits.maxComputeWorkgroupStorageSize) continue;
    out.push(t);
  }
  return out;
}

/**
 * Direct tiles with k lanes (gemm_plan.ts `laneTile`) for a product one of whose sides is at most 16 (a
 * LoRA rank): the block spans that side (rounded up to 4) and 4 or 8 of the other, with 16 to 256 lanes.
 * None for wider products.
 */
export function laneCandidates(m: number, n: number): GemmTile[] {
  const narrow = Math.min(m, n);
  if (narrow > 16) return [];
  const side = Math.ceil(narrow / 4) * 4;
  const out: GemmTile[] = [];
  for (const other of [4, 8]) {
    for (const lanes of [16, 32, 64, 128, 256]) {
      out.push(n <= m ? laneTile(other, side, lanes) : laneTile(side, other, lanes));
    }
  }
  return out;
}

/** A plan's name: its tile's, its k slices and, for stream-K, its workgroups. */
export const planName = (v: { tile: GemmTile; splits: number; streamK?: number }): string =>
  `${tileName(v.tile)}/${v.splits}${(v.streamK ?? 0) > 0 ? ` sk${v.streamK}` : ""}`;

/** A tile's name: BMxBNxBK, then `/1` when single-buffered; a lane tile's TMxTN and its lanes. */
export const tileName = (t: GemmTile): string =>
  (t.KL ?? 1) > 1 ? `${t.TM}x${t.TN} lanes ${t.KL}` : `${t.BM}x${t.BN}x${t.BK}${t.STAGES === 1 ? "/1" : ""}`;

/** One measured plan. */
export interface TunedVariant {
  /** The schedule when not the profile's (a lane tile's "direct"). */
  schedule?: GemmSchedule;
  tile: GemmTile;
  splits: number;
  /** Stream-K workgroups (0: a whole-tile grid). */
  streamK?: number;
  ms: number;
}

/** What the tuner found for one shape. */
export interface TuneResult {
  shape: TuneShape;
  planner: TunedVariant;
  best: TunedVariant;
  /** Relative error of the best plan's result against the planner's. */
  err: number;
  variants: TunedVariant[];
}

/** Deterministic random values in [-1, 1) (a small LCG; never zeros). */
function randomWords(n: number, seed: number, dtype: WgslType): ArrayBufferView {
  let s = (seed * 2654435761) >>> 0 || 1;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
  if (dtype === "f32") return Float32Array.from({ length: n }, next);
  const h = new Uint16Array(n + (n % 2));
  for (let i = 0; i < n; i++) h[i] = numberToF16Bits(next());
  return h;
}

/** The operand buffers of one shape and the request that multiplies them. */
interface Operands {
  req: GemmRequest;
  free: () => void;
}

function operands(rt: GpuRuntime, s: TuneShape, dtype: WgslType): Operands {
  const bufs: GpuBuffer[] = [];
  const upload = (n: number, seed: number, type: WgslType) => {
    const buf = rt.alloc(bufferBytes(n, type), `gemm_tune: operand of ${n}`, true);
    rt.write(buf, randomWords(n, seed, type));
    bufs.push(buf);
    return { buf, bytes: buf.capacity };
  };
  const a = upload(s.m * s.k, 1, dtype), b = upload(s.k * s.n, 2, dtype);
  const lora = s.lora > 0
    ? {
      p: upload(s.m * s.lora, 3, "f32"),
      q: upload(s.n * s.lora, 4, dtype),
      r: s.lora,
      scale: 2,
      dropout: null,
    }
    : undefined;
  return {
    req: {
      a: { bind: a, type: dtype, trans: s.transA },
      b: { bind: b, type: dtype, trans: s.transB },
      m: s.m,
      n: s.n,
      k: s.k,
      lora,
      outType: dtype,
      what: `gemm_tune ${s.name}`,
    },
    free: () => bufs.forEach((x) => rt.release(x)),
  };
}

/**
 * Milliseconds of back-to-back runs before a shape's timings, so the GPU's clock is up (an idle H200 needs
 * about a quarter of a second of load to go from 345 to 1980 MHz).
 */
const WARM_MS = 300;

/** Interleaved timing rounds per plan; the tuner keeps each plan's median. */
const ROUNDS = 3;

/**
 * Milliseconds per run of `record` (GPU time from timestamps when there are any), `reps` runs. With
 * timestamps, `reps` untimed runs are submitted just before the timed ones, so that those start on a busy
 * GPU, as a product inside a training step does, not on one waking from the last timing's await.
 */
async function timeRuns(rt: GpuRuntime, record: () => void, reps: number): Promise<number> {
  if (rt.timestamps) {
    for (let i = 0; i < reps; i++) record();
    rt.beginProfile(false); // submits the untimed runs without waiting for them
    for (let i = 0; i < reps; i++) record();
    const rows = await rt.endProfile();
    return rows.reduce((a, r) => a + r.ms, 0) / reps;
  }
  await rt.sync();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) record();
  await rt.sync();
  return (performance.now() - t0) / reps;
}

/** The plan a choice gives this shape (splits clamped the planner's way). */
function planOf(be: WebGpuBackend, req: GemmRequest, profile: GemmProfile) {
  return planRequest(req, profile, be.rt.limits.maxStorageBufferBindingSize).plan;
}

/** Reads a C buffer as numbers. */
async function readOut(rt: GpuRuntime, buf: GpuBuffer, n: number, dtype: WgslType): Promise<Float64Array> {
  const raw = await rt.read(buf, bufferBytes(n, dtype));
  if (dtype === "f32") return Float64Array.from(new Float32Array(raw, 0, n));
  const h = new Uint16Array(raw, 0, n);
  return Float64Array.from(h, f16BitsToNumber);
}

function relErr(ours: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (ours[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Options of {@link tuneShapes}. */
export interface TuneOptions {
  dtype?: WgslType;
  /** Stop starting new shapes after this many seconds (the rest are reported as not tuned). */
  budgetS?: number;
  /**
   * Stream-K workgroup counts to try with every unsplit tiled candidate that has more tiles than that
   * (GemmPlan.streamK); default none. The candidates without stream-K are timed as well.
   */
  streamK?: readonly number[];
  log?: (line: string) => void;
}

/**
 * Times the planner's plan and every candidate tile × split for each shape; returns what it found. The
 * device's GEMM profile is left as it was.
 */
export async function tuneShapes(
  device: Device,
  shapes: readonly TuneShape[],
  opts: TuneOptions = {},
): Promise<TuneResult[]> {
  const be = device.backend as unknown as WebGpuBackend;
  const rt = be.rt;
  const dtype = opts.dtype ?? "f32";
  const log = opts.log ?? ((l: string) => console.error(l));
  const kernels = new PipelineCache(be.gpuDevice, (msg) => rt.reportError(msg));
  // The heuristics alone (a tuned table the device may have is what this measures against them).
  const own: GemmProfile = { ...be.gemmProfile, choose: undefined };
  // A software adapter's direct schedule has its own tiles (gemm_plan.ts): tune among those there.
  const tiles = own.schedule === "tiled" ? candidateTiles(be.gpuDevice) : [...own.tiles];
  const t0 = performance.now();
  const results: TuneResult[] = [];
  for (const s of shapes) {
    if (opts.budgetS !== undefined && (performance.now() - t0) / 1000 > opts.budgetS) {
      log(`  tune: budget spent, not tuned: ${s.name}`);
      continue;
    }
    const ops = operands(rt, s, dtype);
    const flops = 2 * s.m * s.n * s.k;
    const ctx = (profile: GemmProfile) => ({ rt, kernels, profile });
    const runOf = (profile: GemmProfile) => () => rt.release(recordGemm(ctx(profile), ops.req).buf);
    const forced = (c: GemmChoice): GemmProfile => ({ ...own, choose: () => c });
    const plannerPlan = planOf(be, ops.req, own);
    // Every candidate first, each run once (pipelines compiled, pools filled) before anything is timed:
    // compiling a fully unrolled tile takes up to a second, and an H200 left that idle between timings
    // drops its clock (345 MHz idle, 1980 under load), which had the first tuner measure each variant at
    // a fraction of its speed (the planner's 8192 x 4096 x 4096 at 44.7 ms against 8.0 ms warm).
    const candidates: GemmChoice[] = [];
    const seen = new Set<string>();
    // A choice as the planner takes it (splits clamped), once per tile and split.
    const add = (c: GemmChoice) => {
      const p = planOf(be, ops.req, forced({ ...c, streamK: c.streamK ?? 0 }));
      const key = `${tileName(p.tile)}/${p.splits}/${p.streamK}`;
      if (seen.has(key)) return;
      seen.add(key);
      candidates.push({ schedule: c.schedule, tile: p.tile, splits: p.splits, streamK: p.streamK });
    };
    // Lane tiles for the rank-wide products, on hardware GPUs (the LoRA output products keep their tiles).
    if (own.schedule === "tiled" && s.lora === 0) {
      for (const tile of laneCandidates(s.m, s.n)) {
        for (const want of [1, 2, 4, 8]) {
          if (want > 1 && s.k < 256 * want) break;
          add({ schedule: "direct", tile, splits: want });
        }
      }
    }
    for (const tile of tiles) {
      // Tiles much larger than the output would compute mostly padding.
      if (tile.BM > 2 * Math.max(16, s.m) || tile.BN > 2 * Math.max(16, s.n)) continue;
      const blocksOf = Math.ceil(s.m / tile.BM) * Math.ceil(s.n / tile.BN) * tile.WG;
      for (const want of [1, 2, 4, 8, 16, 32, 64]) {
        if (want > 1 && (s.k < 64 * want || blocksOf * want > (1 << 19))) break;
        add({ tile, splits: want });
      }
      // Stream-K only where it is a plan of its own (the planner falls back to whole tiles otherwise).
      for (const groups of opts.streamK ?? []) {
        if (Math.ceil(s.m / tile.BM) * Math.ceil(s.n / tile.BN) > groups) {
          add({ tile, splits: 1, streamK: groups });
        }
      }
    }
    runOf(own)();
    for (const c of candidates) runOf(forced(c))();
    await rt.sync();
    // Then the GPU held busy until its clock is up ({@link WARM_MS}) before the timings.
    const run = runOf(own);
    const warmMs = device.isSoftware ? 0 : WARM_MS;
    for (const warm0 = performance.now(); performance.now() - warm0 < warmMs;) {
      for (let i = 0; i < 4; i++) run();
      await rt.sync();
    }
    // Every plan timed in ROUNDS interleaved rounds, each starting a ROUNDS-th of the list further on, and
    // its median kept. Timed one after another, the later plans of a list ran on a GPU whose clock had sunk
    // in the waits between timings: the seventh session's run on Deno's WebGPU measured the planner's plan for a
    // 2048 x 8 x 2048 product at 0.025 ms first and at 0.071 ms among the candidates timed after it
    // (bench/NOTES.md).
    const plans = [own, ...candidates.map(forced)];
    const runs = plans.map(runOf);
    const reps: number[] = [];
    for (const run of runs) {
      const once = await timeRuns(rt, run, 1);
      // About 2 ms of GPU work per timing (at most 100 runs): a product of 20 µs timed 10 at a time
      // measured 0.06 ms a run, three times its time inside a step's profile (bench/NOTES.md, eighth
      // session).
      reps.push(Math.max(2, Math.min(100, Math.ceil(2 / Math.max(once, 0.01)))));
    }
    const samples: number[][] = plans.map(() => []);
    for (let round = 0; round < ROUNDS; round++) {
      const first = Math.floor((round * plans.length) / ROUNDS);
      for (let j = 0; j < plans.length; j++) {
        const i = (first + j) % plans.length;
        samples[i].push(await timeRuns(rt, runs[i], reps[i]));
      }
    }
    const ms = samples.map((xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]);
    const planner: TunedVariant = {
      tile: plannerPlan.tile,
      splits: plannerPlan.splits,
      streamK: plannerPlan.streamK,
      ms: ms[0],
    };
    const variants: TunedVariant[] = candidates.map((c, i) => ({
      schedule: c.schedule,
      tile: c.tile,
      splits: c.splits,
      streamK: c.streamK,
      ms: ms[i + 1],
    }));
    variants.sort((a, b) => a.ms - b.ms);
    const best = variants[0] ?? planner;
    // The best plan's result against the planner's (which the property tests check against the CPU).
    const ref = recordGemm({ rt, kernels, profile: own }, ops.req);
    const got = recordGemm({ rt, kernels, profile: forced(best) }, ops.req);
    const n = s.m * s.n;
    const err = relErr(await readOut(rt, got.buf, n, dtype), await readOut(rt, ref.buf, n, dtype));
    rt.release(ref.buf);
    rt.release(got.buf);
    ops.free();
    const tf = (ms: number) => (flops / (ms * 1e9)).toFixed(2);
    // With lane candidates, the best of each kind (a lane tile saves the split-K reduce's dispatch).
    const bestOf = (lanes: boolean) => variants.find((v) => ((v.tile.KL ?? 1) > 1) === lanes);
    const [tiledBest, laneBest] = [bestOf(false), bestOf(true)];
    if (laneBest !== undefined && tiledBest !== undefined) {
      log(
        `  ${s.name.padEnd(34)} best tiled ${tileName(tiledBest.tile)}/${tiledBest.splits} ${
          tiledBest.ms.toFixed(4)
        } ms, best lanes ${tileName(laneBest.tile)}/${laneBest.splits} ${laneBest.ms.toFixed(4)} ms`,
      );
    }
    log(
      `  ${s.name.padEnd(34)} planner ${tileName(planner.tile)}/${planner.splits} ${
        planner.ms.toFixed(3)
      } ms ` +
        `(${tf(planner.ms)} TFLOP/s)  best ${planName(best)} ${best.ms.toFixed(3)} ms ` +
        `(${tf(best.ms)})  x${(planner.ms / best.ms).toFixed(2)}  err ${err.toExponential(1)}`,
    );
    results.push({ shape: s, planner, best, err, variants });
  }
  return results;
}

/** The results as a markdown table. */
export function tuneTable(results: readonly TuneResult[]): string[] {
  const tf = (r: TuneResult, ms: number) => (2 * r.shape.m * r.shape.n * r.shape.k / (ms * 1e9)).toFixed(2);
  const lines = [
    "| GEMM | m, n, k, layout | planner plan | ms | TFLOP/s | best plan | ms | TFLOP/s | speed-up | next best |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const r of results) {
    const s = r.shape;
    const next = r.variants.slice(1, 4).map((v) => `${planName(v)} ${v.ms.toFixed(3)}`);
    lines.push(
      `| ${s.name} | ${s.m}, ${s.n}, ${s.k}, ${s.transA ? "T" : "N"}${s.transB ? "T" : "N"}${
        s.lora ? ` +LoRA r${s.lora}` : ""
      } | ${tileName(r.planner.tile)} split ${r.planner.splits} | ${r.planner.ms.toFixed(3)} | ${
        tf(r, r.planner.ms)
      } | ${planName(r.best)} | ${r.best.ms.toFixed(3)} | ${tf(r, r.best.ms)} | ${
        (r.planner.ms / r.best.ms).toFixed(2)
      } | ${next.join("; ")} |`,
    );
  }
  return lines;
}

/** The winners as entries of a TS table (`TunedGemm` in src/backend/webgpu/gemm_tuned.ts). */
export function tunedEntries(results: readonly TuneResult[]): string[] {
  return results.map((r) => {
    const s = r.shape, t = r.best.tile;
    return `  { m: ${s.m}, n: ${s.n}, k: ${s.k}, transA: ${s.transA}, transB: ${s.transB}, tile: [${t.BM}, ${t.BN}, ${t.BK}, ${t.TM}, ${t.TN}${
      t.STAGES === 1 && (t.KL ?? 1) === 1 ? ", 1" : ""
    }], ${(t.KL ?? 1) > 1 ? `lanes: ${t.KL}, ` : ""}splits: ${r.best.splits}, ${
      (r.best.streamK ?? 0) > 0 ? `streamK: ${r.best.streamK}, ` : ""
    }speedup: ${(r.planner.ms / r.best.ms).toFixed(2)} }, // ${s.name}`;
  });
}

/** Parses `--shapes`. */
export function parseShapes(spec: string): TuneShape[] {
  if (spec === "llama") return llamaShapes();
  if (spec === "lora") {
    return [...loraShapes(8192, 4096, 16), ...loraShapes(2048, 2048, 8), ...loraShapes(512, 4096, 16)];
  }
  if (spec === "square") {
    return [shape("4096^3 x·Wᵀ", 4096, 4096, 4096, "NT"), shape("4096^3 NN", 4096, 4096, 4096, "NN")];
  }
  return spec.split(";").filter((x) => x !== "").map((part) => {
    const [m, n, k, layout = "NN", r = "0"] = part.split(",");
    return shape(part, Number(m), Number(n), Number(k), layout, Number(r));
  });
}

/**
 * One fused LoRA forward + backward at (M, D, r) under a detailed profile: GPU ms per GEMM shape and
 * plan (and per other kernel), and the wall-clock time of the same step without profiling.
 */
export async function loraProfile(
  device: Device,
  M: number,
  D: number,
  r: number,
  dtype: WgslType,
): Promise<string[]> {
  const be = device.backend as unknown as WebGpuBackend;
  const rt = be.rt;
  const up = (n: number, seed: number) => be.upload(randomWords(n, seed, "f32") as Float32Array, dtype);
  const x = up(M * D, 1), w = up(D * D, 2), a = up(r * D, 3), b = up(D * r, 4), dy = up(M * D, 5);
  const sizes = { m: M, inFeatures: D, outFeatures: D, rank: r, scale: 2, dropout: null };
  const step = () => {
    const y = be.loraForward({ x, w, a, b, bias: null, ...sizes });
    const g = be.loraBackward({ x, w, a, b, dy, needDx: true, ...sizes });
    for (const s of [y, g.dA, g.dB, g.dx!]) be.free(s);
  };
  step();
  await be.sync();
  // Wall-clock of the step, many per await.
  const n = 10;
  let t0 = performance.now();
  for (let i = 0; i < n; i++) step();
  await be.sync();
  const wall = (performance.now() - t0) / n;
  rt.beginProfile(true);
  t0 = performance.now();
  for (let i = 0; i < 3; i++) step();
  const rows = await rt.endProfile();
  const lines = [
    `fused LoRA fwd+bwd (${M}, ${D}, ${r}) ${dtype}: ${
      wall.toFixed(3)
    } ms per step wall-clock (${n} per await); ` +
    `kernels sum ${
      (rows.reduce((s, x) => s + x.ms, 0) / 3).toFixed(3)
    } ms per step (GPU timestamps: ${rt.timestamps})`,
  ];
  rows.sort((p, q) => q.ms - p.ms);
  for (const row of rows) {
    lines.push(`  ${(row.ms / 3).toFixed(3).padStart(9)} ms  x${row.calls / 3}  ${row.name}`);
  }
  for (const s of [x, w, a, b, dy]) be.free(s);
  return lines;
}

if (import.meta.main) {
  const argv = Deno.args;
  const tiny = argv.includes("--tiny");
  const device = await benchDevice(argv);
  const dtype = argValue(argv, "--dtype", "f32") as WgslType;
  console.log(`gemm_tune on ${device} through ${implementationName(argv)}, ${new Date().toISOString()}`);
  const prof = argValue(argv, "--lora-profile", "");
  for (const spec of prof.split(";").filter((x) => x !== "")) {
    const [M, D, r] = spec.split(",").map(Number);
    for (const l of await loraProfile(device, M, D, r, dtype)) console.log(l);
  }
  const spec = argValue(argv, "--shapes", tiny ? "40,24,300,NN;37,16,64,TN;16,40,24,NT,4" : "");
  if (spec !== "") {
    const results = await tuneShapes(device, parseShapes(spec), {
      dtype,
      budgetS: Number(argValue(argv, "--budget-s", "60")),
      streamK: argValue(argv, "--stream-k", "").split(",").filter((x) => x !== "").map(Number),
    });
    console.log(`\nGEMM plans on ${device} (${implementationName(argv)}), ${dtype}, GPU ms per product`);
    for (const l of tuneTable(results)) console.log(l);
    console.log("\nTuned entries:");
    for (const l of tunedEntries(results)) console.log(l);
    const bad = results.filter((r) => r.err > (dtype === "f32" ? 1e-5 : 1e-2));
    if (bad.length > 0) {
      console.log(`MISMATCH: ${bad.map((r) => `${r.shape.name} err ${r.err}`).join("; ")}`);
      Deno.exit(1);
    }
  }
  device.destroy();
  Deno.exit(0);
}
