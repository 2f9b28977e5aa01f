/**
 * Stream-K GEMM plans (gemm_plan.ts GemmPlan.streamK: persistent workgroups sharing the tiles' k slabs,
 * partial tiles summed by wgsl/gemm/stream_k_fixup.wgsl) against the CPU reference: plain products of
 * every layout, with and without bias, and the fused LoRA kernels (LoRA phase, dropout, bias) forced onto
 * stream-K plans of random workgroup counts, on both slab schedules and on the H200's large tile. A
 * workgroup count below the tile count makes runs start and end inside tiles, so the partition, the
 * partial slots and the fix-up all take part; one below half the tile count puts whole tiles first.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import {
  type GemmProfile,
  type GemmShape,
  type GemmTile,
  planGemm,
  streamKPays,
  tiledTile,
} from "../../../src/backend/webgpu/gemm_plan.ts";
import {
  assertClose,
  type FloatType,
  floatTypes,
  fusedDropoutArb,
  fusedLoraOnBoth,
  onBoth,
  printWorst,
  seedArb,
  values,
  withGemmProfile,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";

const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

const size = (max: number) =>
  fc.oneof(fc.integer({ min: 1, max }), fc.constantFrom(1, 3, 4, 7, 31, 32, 33, 64, 67, 129));

/** Small tiles (many tiles at small sizes) on both slab schedules, and the large tile tuned for the H200. */
const TILES: { tile: GemmTile; name: string; runs: number; side: fc.Arbitrary<number> }[] = [
  { tile: tiledTile(32, 32, 8, 4, 4), name: "32×32×8, double-buffered", runs: 8, side: size(300) },
  { tile: tiledTile(32, 32, 16, 4, 4, 1), name: "32×32×16, single-buffered", runs: 8, side: size(300) },
  // Sides past one tile, so that every case has at least four tiles to share.
  {
    tile: tiledTile(128, 128, 16, 8, 8, 1),
    name: "128×128×16 (8×8, single-buffered)",
    runs: 3,
    side: fc.integer({ min: 129, max: 400 }),
  },
];

/** A tiled profile forcing `tile` and stream-K on `groups` workgroups for every shape. */
function forced(tile: GemmTile, groups: number): GemmProfile {
  return { schedule: "tiled", tiles: [tile], choose: () => ({ tile, splits: 1, streamK: groups }) };
}

const shapeOf = (m: number, n: number, k: number): GemmShape => ({
  m,
  n,
  k,
  batch: 1,
  splittable: true,
  maxBindingBytes: 1 << 30,
  vec4Unmasked: true,
});

for (const { tile, name, runs, side } of TILES) {
  gpuTest(
    `stream-K GEMM ${name}: matmul of every layout, with and without bias, matches the CPU`,
    async (dev) => {
      const be = dev.backend as WebGpuBackend;
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            m: side,
            n: side,
            k: size(400),
            transA: fc.boolean(),
            transB: fc.boolean(),
            bias: fc.boolean(),
            // Workgroups as a share of the tiles: few (long runs over several tiles) to nearly one per tile.
            share: fc.double({ min: 0.05, max: 0.95, noNaN: true }),
          }),
          seedArb,
          f,
          async (c, seed, dt) => {
            const tiles = Math.ceil(c.m / tile.BM) * Math.ceil(c.n / tile.BN);
            fc.pre(tiles >= 3);
            const groups = Math.max(2, Math.min(tiles - 1, Math.round(c.share * tiles)));
            const profile = forced(tile, groups);
            // The property must test stream-K, not a plan that fell back to a whole-tile grid.
            assert.equal(planGemm(shapeOf(c.m, c.n, c.k), profile).streamK, groups);
            const av = values(c.m * c.k, seed, dt), bv = values(c.k * c.n, seed + 1, dt);
            const biasV = values(c.n, seed + 2, dt);
            const args = {
              batch: 1,
              m: c.m,
              n: c.n,
              k: c.k,
              transA: c.transA,
              transB: c.transB,
              aBatch: 1,
              bBatch: 1,
            };
            await withGemmProfile(be, profile, async () => {
              const r = await onBoth(
                dev,
                dt,
                (u) => u.be.matmul(u.up(av), u.up(bv), args, c.bias ? u.up(biasV) : undefined),
              );
              assertClose(`stream-K ${name} matmul`, r.gpu[0], r.cpu[0], dt);
            });
          },
        ),
        { numRuns: runs },
      );
    },
  );
}

gpuTest(
  "stream-K GEMM: the fused LoRA forward and backward (LoRA phase, dropout, bias) match the CPU",
  async (dev) => {
    const be = dev.backend as WebGpuBackend;
    const tile = TILES[0].tile;
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          m: size(150),
          inF: size(150),
          outF: size(150),
          rank: fc.constantFrom(1, 4, 7, 16),
          bias: fc.boolean(),
          dropout: fusedDropoutArb,
          groups: fc.integer({ min: 2, max: 12 }),
        }),
        seedArb,
        f,
        async (c, seed, dt) => {
          await withGemmProfile(be, forced(tile, c.groups), async () => {
            const r = await fusedLoraOnBoth(dev, dt, c, seed);
            for (const [i, what] of ["y", "dA", "dB", "dx"].entries()) {
              assertClose(`stream-K lora ${what}`, r.gpu[i], r.cpu[i], dt);
            }
          });
        },
      ),
      { numRuns: 6 },
    );
  },
);

Deno.test("streamKPays: only where the whole-tile grid's last wave idles at least 2% of the time", () => {
  // 4096³ on 128 × 128 tiles over 264 workgroups: 3.88 waves, 3% idle.
  assert.equal(streamKPays(1024, 264), true);
  // 4224 rows: 1,056 tiles, exactly four waves.
  assert.equal(streamKPays(1056, 264), false);
  // No more tiles than workgroups: stream-K would split every tile.
  assert.equal(streamKPays(264, 264), false);
  assert.equal(streamKPays(100, 264), false);
  // 8192 x 4096 on 128 × 128: 2,048 tiles, 7.76 waves, 3% idle.
  assert.equal(streamKPays(2048, 264), true);
});

Deno.test("planGemm: a profile's stream-K applies to its large tile where it pays, and a choice of 0 turns it off", () => {
  const large = tiledTile(128, 128, 16, 8, 8, 1);
  const profile: GemmProfile = {
    schedule: "tiled",
    tiles: [large, tiledTile(64, 64, 16, 4, 4)],
    streamK: 264,
  };
  const square = planGemm(shapeOf(4096, 4096, 4096), profile);
  assert.equal(square.streamK, 264);
  // 1,024 tiles: two full waves of whole tiles, the last 496 tiles (1.88 waves) shared by stream-K.
  assert.equal(square.streamKWhole, 528);
  assert.equal(planGemm(shapeOf(4224, 4096, 4096), profile).streamK, 0);
  const off: GemmProfile = { ...profile, choose: () => ({ tile: large, splits: 1, streamK: 0 }) };
  assert.equal(planGemm(shapeOf(4096, 4096, 4096), off).streamK, 0);
  // A tuned choice of the large tile (a fresh object of the same dimensions) takes the profile's default.
  const chosen: GemmProfile = {
    ...profile,
    choose: () => ({ tile: tiledTile(128, 128, 16, 8, 8, 1), splits: 1 }),
  };
  assert.equal(planGemm(shapeOf(4096, 4096, 4096), chosen).streamK, 264);
  // Batched and split products keep their whole-tile grids.
  assert.equal(planGemm({ ...shapeOf(4096, 4096, 4096), batch: 2 }, chosen).streamK, 0);
});

Deno.test({
  name: "stream-K GEMM errors summary",
  ignore: gpu === null,
  fn: () => printWorst("gemm stream-K"),
});
