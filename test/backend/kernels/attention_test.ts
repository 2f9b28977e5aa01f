/**
 * The tiled attention kernels (src/backend/kernels/attention.ts: forward, backward for the queries,
 * backward for keys and values) on WebGPU against their CPU reference through `Backend.run`, each kernel
 * on its own, as fast-check properties over random tiles (rows per workgroup, invocations per row, keys
 * or queries per staged tile: every merge path), odd head widths (vec4 and scalar loads), odd sequence
 * lengths and caches (keys > seq), grouped-query ratios 1 to 3, sliding windows and padding masks with
 * rows that see no key at all, f32 and f16; the tile checks' errors; and the tile byte counts against the
 * limit every device has.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ConfigError, type Device } from "../../../mod.ts";
import {
  ATTENTION_BACKWARD_KV,
  ATTENTION_BACKWARD_Q,
  ATTENTION_FORWARD,
  ATTENTION_WORKGROUP_BYTES,
  defaultTiles,
  type KeyTile,
  keyTileBytes,
  type QueryTile,
  queryTileBytes,
  type TiledAttentionArgs,
} from "../../../src/backend/kernels/attention.ts";
import {
  assertClose,
  type FloatType,
  floatTypes,
  onBoth,
  printWorst,
  TOL,
  values,
} from "../webgpu/compare.ts";
import { gpu, gpuTest } from "../webgpu/gpu.ts";
import { Rng } from "../../../src/core/random.ts";

/** One kernel-level case: sizes, options, tiles and the seed of the values. */
interface Case {
  batch: number;
  kvHeads: number;
  group: number;
  seq: number;
  past: number;
  dim: number;
  window: number;
  /** Leading padded keys per batch row (0: no mask). */
  pad: number[] | null;
  query: QueryTile;
  key: KeyTile;
  seed: number;
}

function argsOf(c: Case): TiledAttentionArgs {
  const keys = c.past + c.seq;
  const keyMask = c.pad === null
    ? null
    : Int32Array.from({ length: c.batch * keys }, (_, i) =>
      (i % keys) >= c.pad![Math.floor(i / keys)] ? 1 : 0);
  return {
    batch: c.batch,
    heads: c.kvHeads * c.group,
    kvHeads: c.kvHeads,
    seq: c.seq,
    keys,
    dim: c.dim,
    scale: 1 / Math.sqrt(c.dim),
    window: c.window,
    keyMask,
    tiles: { forward: c.query, backwardQ: c.query, backwardKV: c.key },
  };
}

const norm = (a: ArrayLike<number>) => Math.sqrt(Array.from(a).reduce((s, x) => s + x * x, 0));

/** Every output of the three kernels on the GPU and the CPU reference (the backward fed each side's own). */
async function check(dev: Device, dt: FloatType, c: Case): Promise<void> {
  const a = argsOf(c);
  const nq = a.batch * a.heads * a.seq * a.dim, nkv = a.batch * a.kvHeads * a.keys * a.dim;
  const q = values(nq, c.seed, dt), k = values(nkv, c.seed + 1, dt), v = values(nkv, c.seed + 2, dt);
  const g = values(nq, c.seed + 3, dt);
  const { gpu, cpu } = await onBoth(dev, dt, (u) => {
    const [qs, ks, vs, gs] = [u.up(q), u.up(k), u.up(v), u.up(g)];
    const [o, lse] = u.be.run(ATTENTION_FORWARD, [qs, ks, vs], a);
    const [dq, delta] = u.be.run(ATTENTION_BACKWARD_Q, [qs, ks, vs, o, gs, lse], a);
    const [dk, dv] = u.be.run(ATTENTION_BACKWARD_KV, [qs, ks, vs, gs, lse, delta], a);
    return [o, lse, dq, delta, dk, dv];
  });
  const names = ["output", "log-sum-exp", "dq", "delta", "dk", "dv"];
  for (const i of [0, 1, 2, 3, 5]) assertClose(`tiled attention ${names[i]}`, gpu[i], cpu[i], dt);
  // dk sums p (dp − delta) q, which cancels to 0 where a query sees one key: there it is held to dv's size
  // (as in test/backend/webgpu/attention_props_test.ts).
  if (norm(cpu[4]) > 1e-2 * norm(cpu[5])) assertClose("tiled attention dk", gpu[4], cpu[4], dt);
  else {
    const err = norm(gpu[4].map((x, j) => x - cpu[4][j]));
    assert.ok(
      err <= TOL[dt] * norm(cpu[5]),
      `tiled attention dk (${dt}): error ${err} next to |dv| ${norm(cpu[5])}`,
    );
  }
}

// A few tiles, each exercising another path (one row per workgroup, several invocations per row merging
// through workgroup memory, key tiles narrower than the splits' rows), reused across runs: every new tile
// and width is a pipeline to compile, seconds each on the software adapter.
const queryTileArb = fc.constantFrom<QueryTile>(
  { BR: 4, KS: 2, BC: 4 },
  { BR: 1, KS: 4, BC: 4 },
  { BR: 16, KS: 1, BC: 2 },
);
const keyTileArb = fc.constantFrom<KeyTile>(
  { BC: 8, KS: 2, BQ: 4 },
  { BC: 1, KS: 4, BQ: 4 },
  { BC: 4, KS: 1, BQ: 2 },
);

const caseArb = (dev: Device): fc.Arbitrary<[FloatType, Case]> =>
  fc.tuple(
    floatTypes(dev),
    fc.record({
      batch: fc.integer({ min: 1, max: 2 }),
      kvHeads: fc.integer({ min: 1, max: 2 }),
      group: fc.constantFrom(1, 2, 3),
      seq: fc.oneof(fc.integer({ min: 1, max: 24 }), fc.constantFrom(37, 70)),
      past: fc.constantFrom(0, 0, 5),
      // Narrow heads (scalar loads, vec4 loads, a partial last chunk); the wide ones in the named cases.
      dim: fc.constantFrom(1, 3, 4, 5, 8),
      window: fc.constantFrom(0, 0, 1, 6),
      masked: fc.boolean(),
      query: queryTileArb,
      key: keyTileArb,
      seed: fc.integer({ min: 0, max: 1e9 }),
    }).map(({ masked, ...c }): Case => {
      const rng = new Rng(c.seed + 7);
      // Up to 4 leading pads: with no cache the first rows then see no key at all.
      const pad = masked ? Array.from({ length: c.batch }, () => Math.floor(rng.uniform() * 5)) : null;
      return { ...c, pad };
    }),
  );

gpuTest(
  "tiled attention kernels equal the CPU reference over random tiles and sizes (f32 and f16)",
  async (dev) => {
    await fc.assert(fc.asyncProperty(caseArb(dev), ([dt, c]) => check(dev, dt, c)), { numRuns: 20 });
  },
);

const base: Case = {
  batch: 2,
  kvHeads: 1,
  group: 3,
  seq: 9,
  past: 0,
  dim: 5,
  window: 0,
  pad: null,
  query: { BR: 4, KS: 2, BC: 4 },
  key: { BC: 8, KS: 2, BQ: 4 },
  seed: 3,
};

gpuTest(
  "tiled attention: the default tiles at head widths 64 and 65, caches, windows, padding-only rows",
  async (dev) => {
    const d64 = defaultTiles(64), d65 = defaultTiles(65);
    await check(dev, "f32", { ...base, dim: 64, seq: 70, query: d64.forward, key: d64.backwardKV });
    await check(dev, "f32", { ...base, dim: 65, seq: 20, past: 5, query: d65.forward, key: d65.backwardKV });
    // Every row of batch 0 but the last sees no key; with a window and a cache.
    await check(dev, "f32", { ...base, pad: [8, 2], window: 3 });
    await check(dev, "f32", { ...base, past: 4, window: 2, group: 2, kvHeads: 2 });
    if (dev.supportsDType("f16")) await check(dev, "f16", { ...base, pad: [3, 0], dim: 8 });
  },
);

Deno.test("tiled attention: tiles that are not powers of two, or do not fit 16 KiB, are ConfigErrors naming them", () => {
  assert.throws(
    () => ATTENTION_FORWARD.check!([], { ...argsOf(base), tiles: { forward: { BR: 3, KS: 1, BC: 4 } } }),
    (e) => e instanceof ConfigError && /tile BR 3, KS 1, BC 4/.test(e.message),
  );
  assert.throws(
    () =>
      ATTENTION_BACKWARD_KV.check!([], {
        ...argsOf({ ...base, dim: 128 }),
        tiles: { backwardKV: { BC: 64, KS: 1, BQ: 8 } },
      }),
    (e) => e instanceof ConfigError && /at dim 128 needs \d+ bytes/.test(e.message),
  );
});

Deno.test("tiled attention: the default tiles fit WebGPU's default 16 KiB of workgroup memory at every width", () => {
  for (let dim = 1; dim <= 128; dim++) {
    const t = defaultTiles(dim);
    assert.ok(queryTileBytes(t.forward, dim) <= ATTENTION_WORKGROUP_BYTES, `forward at ${dim}`);
    assert.ok(queryTileBytes(t.backwardQ, dim) <= ATTENTION_WORKGROUP_BYTES, `dq at ${dim}`);
    assert.ok(keyTileBytes(t.backwardKV, dim) <= ATTENTION_WORKGROUP_BYTES, `dk/dv at ${dim}`);
  }
});

Deno.test({
  name: "tiled attention kernel errors summary",
  ignore: gpu === null,
  fn: () => printWorst("tiled attention"),
});
