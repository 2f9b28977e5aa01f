/**
 * Every GEMM tile of both schedules (workgroup-tiled for GPUs, direct for software adapters) against the
 * CPU reference, each forced in turn on the test adapter: plain products (batched, transposed, any shape,
 * split-K when deep) and the fused LoRA kernels (LoRA phase, output and input dropout, bias). The planner
 * only ever picks among these tiles, so a wrong tile cannot hide behind the shapes the other suites draw.
 */
import fc from "fast-check";
import type { FusedDropout } from "../../../src/backend/backend.ts";
import type { Device } from "../../../src/backend/device.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import {
  DIRECT_PROFILE,
  type GemmProfile,
  type GemmTile,
  laneTile,
  TILED_PROFILE,
  tiledTile,
} from "../../../src/backend/webgpu/gemm_plan.ts";
import { tileOf, TUNED_TABLES } from "../../../src/backend/webgpu/gemm_tuned.ts";
import {
  assertClose,
  type FloatType,
  floatTypes,
  fusedLoraOnBoth,
  onBoth,
  printWorst,
  seedArb,
  values,
  withGemmProfile,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";

/**
 * Runs per tile. A software adapter compiles each kernel on first use, and the large direct tiles take
 * seconds to compile, so those get f32 and fewer runs (the element type does not interact with the tile:
 * the smallest tile covers f16).
 */
const RUNS = { matmul: 5, lora: 1, largeDirectMatmul: 3, largeDirectLora: 1, tunedOnlyMatmul: 3 };
const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

/** Sizes around and between tile edges, primes, 1 and multiples of 4 (the vec4 forms). */
const anySize = (max: number) =>
  fc.oneof(fc.integer({ min: 1, max }), fc.constantFrom(1, 3, 4, 7, 8, 13, 16, 31, 32, 64, 67));

/** Multiples of 4 only: the direct schedule uses its large tiles only where every operand reads vec4. */
const vecSize = (max: number) =>
  fc.oneof(
    fc.integer({ min: 1, max: Math.floor(max / 4) }).map((d) => 4 * d),
    fc.constantFrom(4, 12, 32, 36, 64, 68),
  );

const dropoutArb: fc.Arbitrary<FusedDropout | null> = fc.oneof(
  fc.constant(null),
  fc.record({
    p: fc.double({ min: 0.1, max: 0.7, noNaN: true }),
    seed: fc.integer({ min: 0, max: 0xffffffff }),
    position: fc.constantFrom<"pre" | "post">("pre", "post"),
  }),
);

/**
 * The direct schedule is the software adapters' kernel and is never chosen on a hardware GPU, where its
 * fully unrolled large tiles take the driver's shader compiler minutes (seen on an H200): test it where
 * it runs. CI's adapter is a software one, so CI always covers it.
 */
function skipOnHardware(schedule: string, tile: GemmTile, dev: Device, name: string): boolean {
  if (schedule !== "direct" || (tile.KL ?? 1) > 1 || dev.isSoftware) return false;
  console.log(`  ${name}: not run on the hardware adapter ${dev.name} (a software-adapter schedule)`);
  return true;
}

function tileName(t: GemmTile): string {
  if ((t.KL ?? 1) > 1) return `${t.TM}×${t.TN} per block, ${t.KL} k lanes`;
  if (t.BM === t.TM) return `${t.TM}×${t.TN} per invocation`;
  return `${t.BM}×${t.BN}×${t.BK} (${t.TM}×${t.TN}${t.STAGES === 1 ? ", single-buffered" : ""})`;
}

/**
 * The tiled template's other slab schedule (one buffer, two barriers per slab), which tuned tables and the
 * tuner may name: its code is the same for every tile, so one small tile covers it.
 */
const SINGLE_BUFFERED = tiledTile(64, 64, 16, 4, 4, 1);

/**
 * Tiles run with swizzled slabs (GemmProfile.slabSwizzle, which a tuned table may turn on): the
 * single-buffered tile (matmul and LoRA) and every tile only a tuned table names (below).
 */
const SWIZZLED = new Set<GemmTile>([SINGLE_BUFFERED]);

/**
 * The tiles the tuned tables name beyond the profile's (gemm_tuned.ts): the planner takes them on those
 * adapters, so each runs the plain products here too (the LoRA phase is the same template code on every
 * tile, and the profile's tiles cover it).
 */
const TUNED_ONLY: GemmTile[] = [];

/**
 * Direct tiles with k lanes (GemmTile.KL), which tuned tables name for the rank-wide products on hardware
 * GPUs: lanes as the fast index (A stored [m, k]) and the slow one (A stored [k, m]) come from the drawn
 * layouts. 2 lanes sum in one level of the tree, 32 in two; with 256 invocations a round of the sum holds 4
 * vec4s per invocation, so a 4 × 8 block takes 2 rounds, and 8 × 4 in 64-invocation workgroups (16 vec4s a
 * round) one. The lane tiles tuned tables name (three levels among them) run
 * separately, in the layout their table uses them for (LANE_ENTRIES, below).
 */
const LANE_TILES: GemmTile[] = [laneTile(4, 8, 32), laneTile(8, 4, 2, 64)];

const named = new Set([...TILED_PROFILE.tiles, SINGLE_BUFFERED].map(tileName));
for (const table of TUNED_TABLES) {
  // Lane tiles (entries with `lanes`) run below, in LANE_ENTRIES.
  const tiled = table.entries.filter((e) => e.lanes === undefined).map((e) => e.tile);
  for (const t of [...(table.largeTile === undefined ? [] : [table.largeTile]), ...tiled]) {
    const tile = tileOf(t);
    if (tile === undefined) throw new Error(`${table.adapter}: tuned tile [${t}] is no tile`);
    if (!named.has(tileName(tile))) {
      named.add(tileName(tile));
      TUNED_ONLY.push(tile);
      SWIZZLED.add(tile);
    }
  }
}

for (const base of [TILED_PROFILE, DIRECT_PROFILE]) {
  const tiles = base === TILED_PROFILE
    ? [...base.tiles, SINGLE_BUFFERED, ...TUNED_ONLY]
    : [...base.tiles, ...LANE_TILES];
  const runs: [GemmTile, boolean][] = tiles.flatMap((t) =>
    // The single-buffered tile runs both ways; a tuned-only tile swizzled only (the table naming most of
    // them, Dawn's, swizzles); every other tile plain.
    t === SINGLE_BUFFERED ? [[t, false], [t, true]] : [[t, SWIZZLED.has(t)]]
  );
  for (const [tile, slabSwizzle] of runs) {
    const profile: GemmProfile = { schedule: base.schedule, tiles: [tile], slabSwizzle };
    const name = `${base.schedule} GEMM tile ${tileName(tile)}${slabSwizzle ? ", swizzled slabs" : ""}`;
    // The direct schedule uses its large tiles only where every operand reads vec4 and none is masked.
    const large = base.schedule === "direct" && base.tiles.includes(tile) &&
      tile !== base.tiles[base.tiles.length - 1];
    const size = large ? vecSize : anySize;
    const ranks = large ? [4, 16] : [1, 4, 7, 16];
    const types = large ? fc.constant<FloatType>("f32") : f;
    const dropouts = large ? fc.constant(null) : dropoutArb;

    gpuTest(`${name}: matmul (batched, transposed, split-K when deep) matches the CPU`, async (dev) => {
      if (skipOnHardware(base.schedule, tile, dev, name)) return;
      const be = dev.backend as WebGpuBackend;
      await withGemmProfile(be, profile, () =>
        fc.assert(
          fc.asyncProperty(
            fc.record({
              batch: fc.integer({ min: 1, max: 2 }),
              m: size(70),
              n: size(70),
              // Deep k (with few blocks) takes the split-K path.
              k: fc.oneof(size(70), size(700).filter((k) => k >= 300)),
              transA: fc.boolean(),
              transB: fc.boolean(),
            }),
            seedArb,
            types,
            async (c, seed, dt) => {
              const av = values(c.batch * c.m * c.k, seed, dt),
                bv = values(c.batch * c.k * c.n, seed + 1, dt);
              const args = { ...c, aBatch: c.batch, bBatch: c.batch };
              const r = await onBoth(dev, dt, (u) => u.be.matmul(u.up(av), u.up(bv), args));
              assertClose(`${name} matmul`, r.gpu[0], r.cpu[0], dt);
            },
          ),
          {
            numRuns: large
              ? RUNS.largeDirectMatmul
              : TUNED_ONLY.includes(tile)
              ? RUNS.tunedOnlyMatmul
              : RUNS.matmul,
          },
        ));
    });

    // The LoRA phase is the same template code on every tile; the large direct tiles other than 32×32 (the
    // one LoRA outputs take) skip it: each would cost ~10 s of compiling on a software adapter.
    const loraToo = (!large || (tile.TM === 32 && tile.TN === 32)) && !TUNED_ONLY.includes(tile);
    if (!loraToo) continue;
    gpuTest(`${name}: fused LoRA forward and backward match the CPU`, async (dev) => {
      if (skipOnHardware(base.schedule, tile, dev, name)) return;
      const be = dev.backend as WebGpuBackend;
      await withGemmProfile(be, profile, () =>
        fc.assert(
          fc.asyncProperty(
            fc.record({
              m: size(70),
              inF: size(70),
              outF: size(70),
              rank: fc.constantFrom(...ranks),
              bias: fc.boolean(),
              dropout: dropouts,
            }),
            seedArb,
            types,
            async (c, seed, dt) => {
              const r = await fusedLoraOnBoth(dev, dt, c, seed);
              for (const [i, what] of ["y", "dA", "dB", "dx"].entries()) {
                assertClose(`${name} lora ${what}`, r.gpu[i], r.cpu[i], dt);
              }
            },
          ),
          { numRuns: large ? RUNS.largeDirectLora : RUNS.lora },
        ));
    });
  }
}

/**
 * The lane tiles of the tuned tables, each in the layout of the entries that name it (the layouts of the
 * rank-wide products: x·Aᵀ NT, dy·B NN, dA and dB TN), f32, sizes around the entry's narrow side: one
 * kernel to compile per tile and layout on a software adapter, where every lane tile costs seconds.
 */
const LANE_ENTRIES = new Map<
  string,
  { tile: GemmTile; transA: boolean; transB: boolean; narrowM: boolean }
>();
for (const table of TUNED_TABLES) {
  for (const e of table.entries) {
    if (e.lanes === undefined) continue;
    const tile = tileOf(e.tile, e.lanes);
    if (tile === undefined) throw new Error(`${table.adapter}: tuned lane tile [${e.tile}] is no tile`);
    const key = `${tileName(tile)} ${e.transA ? "T" : "N"}${e.transB ? "T" : "N"}`;
    LANE_ENTRIES.set(key, { tile, transA: e.transA, transB: e.transB, narrowM: e.m < e.n });
  }
}
for (const [key, { tile, transA, transB, narrowM }] of LANE_ENTRIES) {
  const name = `direct GEMM tuned tile ${key}`;
  gpuTest(`${name}: matmul (split-K when deep) matches the CPU`, async (dev) => {
    const be = dev.backend as WebGpuBackend;
    const narrow = narrowM ? tile.TM : tile.TN;
    await withGemmProfile(be, { schedule: "direct", tiles: [tile] }, () =>
      fc.assert(
        fc.asyncProperty(
          fc.record({
            wide: anySize(150),
            narrow: fc.integer({ min: 1, max: narrow }),
            k: fc.oneof(anySize(300), fc.integer({ min: 300, max: 2000 })),
          }),
          seedArb,
          async (c, seed) => {
            const [m, n] = narrowM ? [c.narrow, c.wide] : [c.wide, c.narrow];
            const av = values(m * c.k, seed, "f32"), bv = values(c.k * n, seed + 1, "f32");
            const args = { batch: 1, m, n, k: c.k, transA, transB, aBatch: 1, bBatch: 1 };
            const r = await onBoth(dev, "f32", (u) => u.be.matmul(u.up(av), u.up(bv), args));
            assertClose(`${name} matmul`, r.gpu[0], r.cpu[0], "f32");
          },
        ),
        { numRuns: RUNS.tunedOnlyMatmul },
      ));
  });
}

Deno.test({
  name: "GEMM schedule errors summary",
  ignore: gpu === null,
  fn: () => printWorst("gemm schedules"),
});
