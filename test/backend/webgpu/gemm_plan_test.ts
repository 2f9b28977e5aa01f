/**
 * The GEMM planner (pure, no GPU): every plan uses a tile of its profile, covers k exactly once with
 * non-empty slices aligned for the kernels' k steps, keeps the partial sums within one binding, never
 * splits what must not be split, and picks the tiles the schedules were built around.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  DIRECT_PROFILE,
  type GemmShape,
  laneTile,
  pairTile,
  planGemm,
  TILED_PROFILE,
} from "../../../src/backend/webgpu/gemm_plan.ts";
import { ConfigError } from "../../../src/core/errors.ts";

const shapeArb: fc.Arbitrary<GemmShape> = fc.record({
  m: fc.integer({ min: 1, max: 5000 }),
  n: fc.integer({ min: 1, max: 5000 }),
  k: fc.integer({ min: 0, max: 20000 }),
  batch: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 8 })),
  splittable: fc.boolean(),
  maxBindingBytes: fc.oneof(fc.constant(2 ** 31), fc.integer({ min: 2 ** 16, max: 2 ** 28 })),
  vec4Unmasked: fc.boolean(),
  lora: fc.boolean(),
});

Deno.test("planGemm: tiles from the profile, k covered once by aligned non-empty slices, bounded partials", () => {
  fc.assert(
    fc.property(shapeArb, fc.constantFrom(TILED_PROFILE, DIRECT_PROFILE), (s, profile) => {
      const p = planGemm(s, profile);
      assert.ok(profile.tiles.includes(p.tile));
      assert.equal(p.schedule, profile.schedule);
      assert.equal(p.tilesN, Math.ceil(s.n / p.tile.BN));
      assert.equal(p.tiles, Math.ceil(s.m / p.tile.BM) * p.tilesN);
      assert.ok(Number.isInteger(p.splits) && p.splits >= 1);
      if (p.splits === 1) {
        assert.equal(p.chunk, s.k);
        return;
      }
      assert.ok(s.splittable && s.batch === 1, "split only what may be split");
      assert.equal(p.chunk % Math.max(4, p.tile.BK), 0, "slices start on a k step");
      assert.ok(p.splits * p.chunk >= s.k && (p.splits - 1) * p.chunk < s.k, "k covered, no empty slice");
      assert.ok(p.splits * s.m * s.n * 4 <= s.maxBindingBytes, "partial sums fit one binding");
    }),
    { numRuns: 2000 },
  );
});

Deno.test("planGemm: large products take the large tiles, rank-wide ones the long thin tiles", () => {
  const shape = (m: number, n: number, k: number): GemmShape => ({
    m,
    n,
    k,
    batch: 1,
    splittable: true,
    maxBindingBytes: 2 ** 31,
    vec4Unmasked: true,
  });
  const tile = (m: number, n: number, k: number, profile = DIRECT_PROFILE) => {
    // Two CPU threads, as on the 2-core CI machine: the direct plan scales its work units with the threads.
    const t = planGemm(shape(m, n, k), profile, 2).tile;
    return `${t.BM}x${t.BN}`;
  };
  assert.equal(tile(1024, 256, 256), "32x32");
  assert.equal(tile(1024, 16, 256), "32x16");
  assert.equal(tile(16, 256, 1024), "16x32");
  assert.equal(tile(4096, 4096, 4096, TILED_PROFILE), "128x128");
  assert.equal(tile(8192, 16, 4096, TILED_PROFILE), "128x16");
  assert.equal(tile(2048, 8, 2048, TILED_PROFILE), "128x16");
  assert.equal(tile(16, 4096, 8192, TILED_PROFILE), "16x128");
  assert.equal(tile(200, 200, 100, TILED_PROFILE), "64x64");
  // The chunked loss's 32-row products (Llama-3.2-1B: vocabulary 128256, hidden 2048): the 32-row tile, and
  // for the d-hidden product (k = the vocabulary) k split until the GPU has enough invocations.
  assert.equal(tile(32, 128256, 2048, TILED_PROFILE), "32x128");
  const dh = planGemm(shape(32, 2048, 128256), TILED_PROFILE, 2);
  assert.equal(`${dh.tile.BM}x${dh.tile.BN}`, "32x128");
  assert.ok(dh.splits * dh.tiles * dh.tile.WG >= 1 << 16, `too few invocations: ${JSON.stringify(dh)}`);
  // A profile's choice overrides the heuristics, LoRA products included; the split is clamped to k.
  const t32 = TILED_PROFILE.tiles[2];
  const chosen = { ...TILED_PROFILE, choose: () => ({ tile: t32, splits: 8 }) };
  const c = planGemm({ ...shape(32, 4096, 4096), lora: true }, chosen, 2);
  assert.equal(c.tile, t32);
  assert.equal(c.splits, 8);
  assert.equal(planGemm({ ...shape(32, 4096, 40), lora: true }, chosen, 2).splits, 2);
  // A choice may name another schedule's tile: a lane tile on the tiled profile plans on the direct
  // schedule, its k slices aligned to 4.
  const lanes = laneTile(4, 8, 64);
  const onLanes = {
    ...TILED_PROFILE,
    choose: () => ({ schedule: "direct" as const, tile: lanes, splits: 3 }),
  };
  const l = planGemm(shape(2048, 8, 2050), onLanes, 2);
  assert.equal(l.schedule, "direct");
  assert.equal(l.tile, lanes);
  assert.deepEqual([l.splits, l.chunk % 4, l.tiles], [3, 0, 512]);
  // The LoRA output product plans as the plain one (the H200's 512 x 4096 x 4096 + LoRA r16: 128 x 128
  // with 2 slices, 1.44x faster than the unsplit 64 x 64 the heuristics took when they left it whole).
  const plain = planGemm(shape(512, 4096, 4096), TILED_PROFILE, 2);
  const withLora = planGemm({ ...shape(512, 4096, 4096), lora: true }, TILED_PROFILE, 2);
  assert.deepEqual(withLora, plain);
  assert.equal(`${withLora.tile.BM}x${withLora.tile.BN}/${withLora.splits}`, "128x128/2");
  // Rows that fit no tile take the one that pads them least, not the 128-row one.
  assert.equal(tile(20, 128256, 2048, TILED_PROFILE), "32x128");
  // Deep and narrow (LoRA's dA on a GPU): the large tile with k split.
  const p = planGemm(shape(16, 2048, 8192), TILED_PROFILE, 2);
  assert.ok(p.splits > 1, `expected split-K, got ${JSON.stringify(p)}`);
  // Small products take the smallest tile, and so do direct products without vec4 access or with a mask.
  assert.equal(tile(5, 7, 3), "4x8");
  assert.equal(planGemm({ ...shape(1024, 256, 256), vec4Unmasked: false }, DIRECT_PROFILE, 2).tile.BM, 4);
});

Deno.test("laneTile: blocks of multiples of 4, lanes a power of two from 2 dividing the workgroup", () => {
  assert.deepEqual(laneTile(4, 16, 128), {
    BM: 4,
    BN: 16,
    BK: 4,
    TM: 4,
    TN: 16,
    WG: 256,
    STAGES: 1,
    KL: 128,
  });
  for (const [tm, tn, lanes, wg] of [[4, 6, 32, 256], [4, 8, 1, 256], [4, 8, 24, 256], [4, 8, 512, 256]]) {
    assert.throws(
      () => laneTile(tm, tn, lanes, wg),
      (e: Error) => e instanceof ConfigError && /laneTile/.test(e.message),
    );
  }
});

Deno.test("pairTile: hardware GPUs pair products of up to 64 rows and 4,096 deep on 8 x 4 blocks, k / 32 lanes in 16-64", () => {
  assert.deepEqual(pairTile(8, 2048, TILED_PROFILE), laneTile(8, 4, 64));
  // Rank 16 takes two row blocks of 8.
  assert.deepEqual(pairTile(16, 512, TILED_PROFILE), laneTile(8, 4, 16));
  assert.deepEqual(pairTile(16, 4096, TILED_PROFILE), laneTile(8, 4, 64));
  // Ranks under 8 take the block of 4 rows where it covers them; 5-7 pad to 8 (the kernel skips rows past m).
  assert.deepEqual(pairTile(4, 100, TILED_PROFILE), laneTile(4, 4, 16));
  assert.deepEqual(pairTile(7, 100, TILED_PROFILE), laneTile(8, 4, 16));
  assert.deepEqual(pairTile(64, 1000, TILED_PROFILE), laneTile(8, 4, 16));
  // Too many rows, or too deep: apart.
  assert.equal(pairTile(65, 2048, TILED_PROFILE), null);
  assert.equal(pairTile(16, 8192, TILED_PROFILE), null);
  // Software adapters record the products apart, unless a profile names a tile; false turns pairs off.
  assert.equal(pairTile(8, 2048, DIRECT_PROFILE), null);
  const forced = laneTile(4, 4, 2, 64);
  assert.equal(pairTile(8, 2048, { ...DIRECT_PROFILE, pair: forced }), forced);
  assert.equal(pairTile(8, 2048, { ...TILED_PROFILE, pair: false }), null);
});
