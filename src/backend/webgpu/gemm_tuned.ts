/**
 * GEMM plans tuned per adapter: exact shapes (m, n, k and which operands are stored transposed) whose best
 * plan, timed by bench/gemm_tune.ts (`deno run -A bench/lora_bench.ts --full --tune [--dawn]`) on that
 * adapter, beat the planner's by at least 5%. Each table belongs to one adapter as this library names it
 * (Deno's WebGPU and Dawn describe the same H200 differently, and their compilers differ, so each has its
 * own); every other shape plans as usual (gemm_plan.ts), on the table's `largeTile` in place of the
 * profile's largest tile when it names one, and every other adapter plans as usual. A table may also turn
 * on the slab swizzle (`slabSwizzle`) that its adapter's compiler runs faster. A tuned plan computes the
 * same product as the planner's (the tuner checks each winner against it; the property tests check the
 * planner, both slab schedules and the swizzle against the CPU), only faster.
 *
 * An entry may name a direct-schedule tile with k lanes (`lanes`) for a product one of whose sides is a LoRA
 * rank: one dispatch where the tiled schedule needs a split-K pass and its reduce.
 *
 * To add an adapter: run the tuner there and paste its "Tuned entries" lines (those of x1.05 or more).
 * @module
 */
import type { GemmChoice, GemmProfile, GemmShape, GemmTile } from "./gemm_plan.ts";
import { laneTile, TILED_PROFILE, tiledTile } from "./gemm_plan.ts";

/** One tuned shape: its plan ({@link GemmTile} and k slices) and measured gain. */
export interface TunedEntry {
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  /** [BM, BN, BK, TM, TN], then the slab buffers ({@link GemmTile.STAGES}) when not the default 2. */
  tile:
    | readonly [number, number, number, number, number]
    | readonly [number, number, number, number, number, number];
  /**
   * A direct-schedule tile with this many k lanes (gemm_plan.ts `laneTile`, 256 invocations a workgroup)
   * instead of a tiled one; `tile` then names its block as the direct schedule does, [TM, TN, 4, TM, TN].
   */
  lanes?: number;
  splits: number;
  /** Stream-K workgroups for this shape (GemmChoice.streamK; 0 turns the table's default off). */
  streamK?: number;
  /** The planner's time over this plan's, as measured (for the record; not used). */
  speedup: number;
}

/** The tuned shapes of one adapter. */
export interface TunedTable {
  /** The adapter's name exactly as the device reports it (`String(device)` is `webgpu(<name>)`). */
  adapter: string;
  /** Which WebGPU implementation, on which machine and when, for the record. */
  measured: string;
  /**
   * The tile that replaces the profile's first (largest) one for every product the table does not list,
   * when the tuner found another best for the large products on this adapter (as {@link TunedEntry.tile}).
   */
  largeTile?: TunedEntry["tile"];
  /** Whether this adapter's GEMMs swizzle their slabs ({@link GemmProfile.slabSwizzle}); default off. */
  slabSwizzle?: boolean;
  /**
   * Stream-K workgroups for the products on the large tile whose last wave would run part full
   * ({@link GemmProfile.streamK}); absent: none.
   */
  streamK?: number;
  entries: readonly TunedEntry[];
}

/**
 * The tables measured so far (bench/NOTES.md, issue 15, third to seventh sessions, has the tuner runs behind
 * them). Lane tiles (`lanes`) are kept only where the whole fused step got faster with them too: the
 * tuner times each product alone, and at (512, 4096, 16) on Dawn its lane winners made the step 1% slower
 * (seventh session).
 */
export const TUNED_TABLES: readonly TunedTable[] = [
  {
    adapter: "NVIDIA H200",
    measured:
      "Deno 2.9.6's WebGPU (wgpu) on one H200, 2026-12-01 (fifth session; 2026-12-02: one entry in the sixth, lane tiles in the seventh), f32, lora_bench --full --tune and gemm_tune --shapes",
    // Single-buffered 128 × 128 × 16 won every large product of the tuner's run here (x1.04-1.89) and the
    // square GEMM (3.66 against 4.11 ms at 4096³ x·W; bench/NOTES.md, fifth session). No slab swizzle: it
    // lost 0-2% here (sixth session).
    largeTile: [128, 128, 16, 8, 8, 1],
    entries: [
      {
        m: 8192,
        n: 16,
        k: 4096,
        transA: false,
        transB: true,
        tile: [8, 16, 4, 8, 16],
        lanes: 32,
        splits: 1,
        speedup: 1.59,
      }, // (8192, 4096, 16) t = x·Aᵀ (seventh session)
      {
        m: 8192,
        n: 4096,
        k: 4096,
        transA: false,
        transB: true,
        tile: [128, 128, 16, 8, 8, 1],
        splits: 1,
        speedup: 1.05,
      }, // (8192, 4096, 16) y = x·Wᵀ + LoRA
      {
        m: 8192,
        n: 16,
        k: 4096,
        transA: false,
        transB: false,
        tile: [128, 32, 16, 8, 4],
        splits: 4,
        speedup: 1.09,
      }, // (8192, 4096, 16) g = dy·B
      {
        m: 8192,
        n: 4096,
        k: 4096,
        transA: false,
        transB: false,
        tile: [128, 128, 16, 8, 8, 1],
        splits: 1,
        speedup: 1.12,
      }, // (8192, 4096, 16) dx = dy·W + LoRA
      {
        m: 16,
        n: 4096,
        k: 8192,
        transA: true,
        transB: false,
        tile: [16, 128, 16, 4, 8],
        splits: 8,
        speedup: 1.15,
      }, // (8192, 4096, 16) dA = gᵀ·x
      {
        m: 4096,
        n: 16,
        k: 8192,
        transA: true,
        transB: false,
        tile: [128, 16, 16, 8, 4],
        splits: 8,
        speedup: 1.16,
      }, // (8192, 4096, 16) dB = dyᵀ·t
      {
        m: 2048,
        n: 8,
        k: 2048,
        transA: false,
        transB: true,
        tile: [4, 8, 4, 4, 8],
        lanes: 64,
        splits: 1,
        speedup: 1.7,
      }, // (2048, 2048, 8) t = x·Aᵀ (seventh session)
      {
        m: 2048,
        n: 2048,
        k: 2048,
        transA: false,
        transB: true,
        tile: [128, 128, 16, 8, 8, 1],
        splits: 1,
        speedup: 1.89,
      }, // (2048, 2048, 8) y = x·Wᵀ + LoRA
      {
        m: 2048,
        n: 8,
        k: 2048,
        transA: false,
        transB: false,
        tile: [128, 32, 16, 8, 4],
        splits: 16,
        speedup: 1.19,
      }, // (2048, 2048, 8) g = dy·B
      {
        m: 2048,
        n: 2048,
        k: 2048,
        transA: false,
        transB: false,
        tile: [128, 128, 16, 8, 8, 1],
        splits: 1,
        speedup: 1.10,
      }, // (2048, 2048, 8) dx = dy·W + LoRA
      {
        m: 2048,
        n: 8,
        k: 2048,
        transA: true,
        transB: false,
        tile: [4, 8, 4, 4, 8],
        lanes: 64,
        splits: 1,
        speedup: 1.36,
      }, // (2048, 2048, 8) dB = dyᵀ·t (seventh session)
      {
        m: 512,
        n: 4096,
        k: 4096,
        transA: false,
        transB: true,
        tile: [128, 128, 16, 8, 8, 1],
        splits: 2,
        speedup: 1.09,
      }, // (512, 4096, 16) y = x·Wᵀ + LoRA
      {
        m: 512,
        n: 16,
        k: 4096,
        transA: false,
        transB: false,
        tile: [128, 32, 16, 8, 4],
        splits: 32,
        speedup: 1.06,
      }, // (512, 4096, 16) g = dy·B
      {
        m: 512,
        n: 4096,
        k: 4096,
        transA: false,
        transB: false,
        tile: [128, 128, 16, 8, 8, 1],
        splits: 2,
        speedup: 1.52,
      }, // (512, 4096, 16) dx = dy·W + LoRA
      {
        m: 16,
        n: 4096,
        k: 512,
        transA: true,
        transB: false,
        tile: [16, 128, 32, 4, 4],
        splits: 4,
        speedup: 1.08,
      }, // (512, 4096, 16) dA = gᵀ·x (sixth session)
      {
        m: 8,
        n: 2048,
        k: 2048,
        transA: true,
        transB: false,
        tile: [8, 4, 4, 8, 4],
        lanes: 64,
        splits: 1,
        speedup: 1.37,
      }, // (2048, 2048, 8) dA = gᵀ·x (seventh session)
    ],
  },
  {
    adapter: "NVIDIA: 580.159.04 580.159.4.0",
    measured:
      "Dawn (webgpu 0.6.2's dawn.node under Deno 2.9.6) on one H200, 2026-12-01 (small shapes 2026-12-02, sixth session; lane tiles seventh), f32, lora_bench --full --tune and gemm_tune --shapes",
    // With the slabs' padded rows (sixth session) single-buffered 128 × 128 × 16 beat the default here too:
    // 3.77 against 3.92 ms at 4096³ x·Wᵀ, 0.475 against 0.505 at 2048³ (bench/NOTES.md, sixth session).
    largeTile: [128, 128, 16, 8, 8, 1],
    // Swizzled slabs: 3.58 against 3.77 ms at 4096³ x·Wᵀ here, where Deno's WebGPU lost 0-2% with them
    // (bench/NOTES.md, sixth session).
    slabSwizzle: true,
    entries: [
      {
        m: 8192,
        n: 16,
        k: 4096,
        transA: false,
        transB: true,
        tile: [128, 16, 16, 8, 4],
        splits: 8,
        speedup: 1.18,
      }, // (8192, 4096, 16) t = x·Aᵀ
      {
        m: 8192,
        n: 16,
        k: 4096,
        transA: false,
        transB: false,
        tile: [128, 16, 16, 8, 4],
        splits: 4,
        speedup: 1.54,
      }, // (8192, 4096, 16) g = dy·B
      {
        m: 16,
        n: 4096,
        k: 8192,
        transA: true,
        transB: false,
        tile: [16, 128, 16, 4, 8],
        splits: 8,
        speedup: 1.15,
      }, // (8192, 4096, 16) dA = gᵀ·x
      {
        m: 4096,
        n: 16,
        k: 8192,
        transA: true,
        transB: false,
        tile: [128, 16, 16, 8, 4],
        splits: 8,
        speedup: 1.18,
      }, // (8192, 4096, 16) dB = dyᵀ·t
      {
        m: 2048,
        n: 8,
        k: 2048,
        transA: false,
        transB: true,
        tile: [4, 8, 4, 4, 8],
        lanes: 64,
        splits: 1,
        speedup: 1.86,
      }, // (2048, 2048, 8) t = x·Aᵀ (seventh session)
      {
        m: 2048,
        n: 8,
        k: 2048,
        transA: false,
        transB: false,
        tile: [8, 8, 4, 8, 8],
        lanes: 128,
        splits: 1,
        speedup: 1.35,
      }, // (2048, 2048, 8) g = dy·B (seventh session)
      {
        m: 8,
        n: 2048,
        k: 2048,
        transA: true,
        transB: false,
        tile: [8, 4, 4, 8, 4],
        lanes: 64,
        splits: 1,
        speedup: 1.79,
      }, // (2048, 2048, 8) dA = gᵀ·x (seventh session)
      {
        m: 2048,
        n: 8,
        k: 2048,
        transA: true,
        transB: false,
        tile: [4, 8, 4, 4, 8],
        lanes: 64,
        splits: 1,
        speedup: 1.78,
      }, // (2048, 2048, 8) dB = dyᵀ·t (seventh session)
      {
        m: 16,
        n: 4096,
        k: 512,
        transA: true,
        transB: false,
        tile: [16, 128, 32, 4, 4],
        splits: 4,
        speedup: 1.07,
      }, // (512, 4096, 16) dA = gᵀ·x (sixth session)
      {
        m: 4096,
        n: 16,
        k: 512,
        transA: true,
        transB: false,
        tile: [128, 16, 32, 4, 4],
        splits: 4,
        speedup: 1.06,
      }, // (512, 4096, 16) dB = dyᵀ·t (sixth session)
    ],
  },
];

/**
 * The tile with these dimensions: the profile's own object when it has one, else a new tile (the tuner
 * also tries tiles outside the profile, gemm_tune.ts `candidateTiles`); undefined when they are no tile.
 */
export function tileOf(t: TunedEntry["tile"], lanes?: number): GemmTile | undefined {
  if (lanes !== undefined) {
    try {
      return laneTile(t[3], t[4], lanes);
    } catch {
      return undefined;
    }
  }
  const stages = t[5] ?? 2;
  const own = TILED_PROFILE.tiles.find((x) =>
    x.BM === t[0] && x.BN === t[1] && x.BK === t[2] && x.TM === t[3] && x.TN === t[4] && x.STAGES === stages
  );
  if (own !== undefined) return own;
  try {
    return tiledTile(t[0], t[1], t[2], t[3], t[4], stages);
  } catch {
    return undefined;
  }
}

const key = (m: number, n: number, k: number, transA: boolean, transB: boolean) =>
  `${m},${n},${k},${transA ? "T" : "N"}${transB ? "T" : "N"}`;

/**
 * The tuned choice function of the adapter named `adapter` (a {@link GemmProfile.choose}), or undefined
 * when no table names it. Entries whose dimensions make no tile are left out.
 */
export function tunedChoice(adapter: string): ((shape: GemmShape) => GemmChoice | undefined) | undefined {
  const table = TUNED_TABLES.find((t) => t.adapter === adapter);
  if (table === undefined) return undefined;
  const choices = new Map<string, GemmChoice>();
  for (const e of table.entries) {
    const tile = tileOf(e.tile, e.lanes);
    if (tile === undefined) continue;
    const schedule = e.lanes === undefined ? undefined : "direct" as const;
    choices.set(key(e.m, e.n, e.k, e.transA, e.transB), {
      schedule,
      tile,
      splits: e.splits,
      streamK: e.streamK,
    });
  }
  return (s) => choices.get(key(s.m, s.n, s.k, s.transA ?? false, s.transB ?? false));
}

/**
 * The GEMM profile of a hardware adapter: {@link TILED_PROFILE} with the tuned table's plans when one
 * names the adapter, and its {@link TunedTable.largeTile} in place of the profile's largest tile.
 */
export function tunedProfile(adapter: string): GemmProfile {
  const table = TUNED_TABLES.find((t) => t.adapter === adapter);
  if (table === undefined) return TILED_PROFILE;
  const large = table.largeTile === undefined ? undefined : tileOf(table.largeTile);
  const tiles = large === undefined ? TILED_PROFILE.tiles : [large, ...TILED_PROFILE.tiles.slice(1)];
  return {
    ...TILED_PROFILE,
    tiles,
    choose: tunedChoice(adapter),
    slabSwizzle: table.slabSwizzle === true,
    streamK: table.streamK,
  };
}
