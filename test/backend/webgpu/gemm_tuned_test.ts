/** The per-adapter tuned GEMM tables (src/backend/webgpu/gemm_tuned.ts) and how the planner takes them. */
import assert from "node:assert/strict";
import {
  type GemmShape,
  laneTile,
  planGemm,
  TILED_PROFILE,
  tiledTile,
} from "../../../src/backend/webgpu/gemm_plan.ts";
import { TUNED_TABLES, tunedChoice, tunedProfile } from "../../../src/backend/webgpu/gemm_tuned.ts";

const shapeOf = (e: (typeof TUNED_TABLES)[number]["entries"][number]): GemmShape => ({
  m: e.m,
  n: e.n,
  k: e.k,
  batch: 1,
  splittable: true,
  maxBindingBytes: 2 ** 31,
  vec4Unmasked: true,
  transA: e.transA,
  transB: e.transB,
});

Deno.test("tuned tables: every entry names a valid tile, a gain of 5% or more, one entry per shape", () => {
  assert.ok(TUNED_TABLES.length >= 2);
  for (const t of TUNED_TABLES) {
    const seen = new Set<string>();
    for (const e of t.entries) {
      const [BM, BN, BK, TM, TN, stages] = e.tile;
      // Both throw for dimensions that do not make a tile (stage unevenly, or lanes not a power of two).
      const tile = e.lanes === undefined ? tiledTile(BM, BN, BK, TM, TN, stages) : laneTile(TM, TN, e.lanes);
      if (e.lanes !== undefined) {
        assert.deepEqual([BM, BN, BK, stages], [TM, TN, 4, undefined], `${t.adapter}: lane tile [${e.tile}]`);
      }
      assert.ok(tile.WG <= 256, `${t.adapter}: tile ${e.tile} needs ${tile.WG} invocations`);
      assert.ok(e.speedup >= 1.05, `${t.adapter}: ${e.m}x${e.n}x${e.k} gains only ${e.speedup}`);
      assert.ok(Number.isInteger(e.splits) && e.splits >= 1 && e.splits <= 64);
      const k = `${e.m},${e.n},${e.k},${e.transA},${e.transB}`;
      assert.ok(!seen.has(k), `${t.adapter}: ${k} listed twice`);
      seen.add(k);
    }
  }
});

Deno.test("tunedChoice: the listed shapes plan on their tuned tile and split, others and other adapters as before", () => {
  for (const t of TUNED_TABLES) {
    const choose = tunedChoice(t.adapter);
    assert.ok(choose !== undefined, t.adapter);
    const tuned = { ...TILED_PROFILE, choose };
    const listed = new Set(t.entries.map((e) => `${e.m},${e.n},${e.k},${e.transA},${e.transB}`));
    for (const e of t.entries) {
      const s = shapeOf(e);
      const p = planGemm(s, tuned, 2);
      assert.deepEqual([p.tile.BM, p.tile.BN, p.tile.BK, p.tile.TM, p.tile.TN], [...e.tile].slice(0, 5));
      // A lane tile runs on the direct schedule (its own template) on a tiled profile.
      assert.equal(p.schedule, e.lanes === undefined ? "tiled" : "direct");
      assert.equal(p.tile.KL ?? 1, e.lanes ?? 1);
      assert.equal(p.tile.STAGES, e.lanes === undefined ? e.tile[5] ?? 2 : 1);
      assert.equal(p.splits, Math.min(e.splits, Math.floor(e.k / Math.max(4, p.tile.BK))));
      // The same sizes with the other layout of A are not the tuned shape (unless listed themselves).
      const other = { ...s, transA: !e.transA };
      if (!listed.has(`${e.m},${e.n},${e.k},${!e.transA},${e.transB}`)) {
        assert.deepEqual(planGemm(other, tuned, 2), planGemm(other, TILED_PROFILE, 2));
      }
    }
    const unlisted: GemmShape = { ...shapeOf(t.entries[0]), m: 777 };
    assert.deepEqual(planGemm(unlisted, tuned, 2), planGemm(unlisted, TILED_PROFILE, 2));
  }
  assert.equal(tunedChoice("llvmpipe (LLVM 15.0.6, 256 bits)"), undefined);
  assert.equal(tunedChoice("NVIDIA H100"), undefined);
});

Deno.test("tunedProfile: a table's largeTile replaces the largest tile for unlisted shapes; others keep the profile", () => {
  const large: GemmShape = { ...shapeOf(TUNED_TABLES[0].entries[0]), m: 4000, n: 3000, k: 1000 };
  for (const t of TUNED_TABLES) {
    const profile = tunedProfile(t.adapter);
    assert.equal(profile.slabSwizzle, t.slabSwizzle === true, `${t.adapter}: the table's slab swizzle`);
    assert.equal(profile.tiles.length, TILED_PROFILE.tiles.length);
    assert.deepEqual(profile.tiles.slice(1), TILED_PROFILE.tiles.slice(1));
    const first = profile.tiles[0];
    if (t.largeTile === undefined) {
      assert.equal(first, TILED_PROFILE.tiles[0]);
      continue;
    }
    const [BM, BN, BK, TM, TN, stages] = t.largeTile;
    assert.deepEqual(first, tiledTile(BM, BN, BK, TM, TN, stages));
    assert.deepEqual(planGemm(large, profile, 2).tile, first, `${t.adapter}: a large unlisted product`);
  }
  assert.ok(TUNED_TABLES.some((t) => t.largeTile !== undefined), "some table names a large tile");
  assert.equal(tunedProfile("NVIDIA H100"), TILED_PROFILE);
});
