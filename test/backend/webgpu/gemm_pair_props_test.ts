/**
 * Pairs of rank-wide products in one dispatch (webgpu/gemm.ts recordGemmPair, wgsl/gemm/direct.wgsl PAIR):
 * the fused LoRA backward's dA and dB computed as a pair equal the CPU reference over random sizes, ranks,
 * dtypes, dropout on either side and bias, on lane tiles forced through the profile (hardware GPUs pair by
 * default, so the whole GPU suite covers the default tiles there); and a pair that cannot run together is
 * refused with an error naming both products.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import { type GemmContext, pairMismatch, recordGemmPair } from "../../../src/backend/webgpu/gemm.ts";
import { type GemmTile, laneTile } from "../../../src/backend/webgpu/gemm_plan.ts";
import type { Binding } from "../../../src/backend/webgpu/runtime.ts";
import { ConfigError, ShapeError } from "../../../src/core/errors.ts";
import {
  assertClose,
  type FloatType,
  floatTypes,
  fusedDropoutArb,
  fusedLoraOnBoth,
  printWorst,
  seedArb,
  withGemmProfile,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";

const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

/** Sizes around tile edges, primes, 1 and multiples of 4 (the vec4 forms). */
const anySize = (max: number) =>
  fc.oneof(fc.integer({ min: 1, max }), fc.constantFrom(1, 3, 4, 7, 8, 13, 16, 31, 32, 64, 67));

/**
 * Two tree depths: 2 lanes in a 64-invocation workgroup (one level of the lanes' sum, four blocks a
 * workgroup) and 16 lanes on 8 × 4 blocks (two levels: the tile the H200 pairs rank 16 on at 512 tokens,
 * gemm_plan.ts pairTile). Lane tiles take seconds each to compile on a software adapter, so two.
 */
const PAIR_TILES: GemmTile[] = [laneTile(4, 4, 2, 64), laneTile(8, 4, 16)];

for (const tile of PAIR_TILES) {
  const name = `pair of dA and dB on ${tile.TM}×${tile.TN} per block, ${tile.KL} k lanes`;
  gpuTest(`${name}: the fused LoRA forward and backward match the CPU`, async (dev) => {
    const be = dev.backend as WebGpuBackend;
    await withGemmProfile(be, { ...be.gemmProfile, pair: tile }, () =>
      fc.assert(
        fc.asyncProperty(
          fc.record({
            // Tokens are the pair's depth: shallow, and deep enough for several rounds of every lane.
            m: fc.oneof(anySize(70), fc.integer({ min: 300, max: 700 })),
            inF: anySize(70),
            outF: anySize(70),
            // Ranks past one block's rows take several row blocks.
            rank: fc.constantFrom(1, 4, 7, 16, 21),
            bias: fc.boolean(),
            dropout: fusedDropoutArb,
          }),
          seedArb,
          f,
          async (c, seed, dt) => {
            const r = await fusedLoraOnBoth(dev, dt, c, seed);
            for (const [i, what] of ["y", "dA", "dB", "dx"].entries()) {
              assertClose(`${name} ${what}`, r.gpu[i], r.cpu[i], dt);
            }
          },
        ),
        { numRuns: 6 },
      ));
  });
}

/** A request of the pair's shape (buffers are never touched: the checks come first). */
function product(what: string, over: Partial<{ m: number; k: number; n: number }> = {}) {
  const bind = {} as Binding;
  return {
    a: { bind, type: "f32" as const, trans: true },
    b: { bind, type: "f32" as const, trans: false },
    m: over.m ?? 8,
    n: over.n ?? 32,
    k: over.k ?? 64,
    alpha: 2,
    outType: "f32" as const,
    what,
  };
}

Deno.test("recordGemmPair refuses products that cannot share a dispatch, naming both", () => {
  const ctx = {} as GemmContext;
  const tile = laneTile(8, 4, 16);
  assert.equal(pairMismatch({ first: product("dA"), second: product("dB", { n: 48 }) }), null);
  assert.throws(
    () => recordGemmPair(ctx, { first: product("dA"), second: product("dB", { k: 65 }) }, tile),
    (e: Error) =>
      e instanceof ShapeError && /dA and dB cannot pair: k differs \(64 against 65\)/.test(e.message),
  );
  const masked = product("dB");
  assert.match(
    pairMismatch({
      first: { ...product("dA"), b: { ...product("dA").b, masked: true } },
      second: { ...masked, b: { ...masked.b, masked: true } },
    }) ?? "",
    /both B operands are masked/,
  );
  assert.match(pairMismatch({ first: product("dA", { n: 0 }), second: product("dB") }) ?? "", /empty/);
  assert.throws(
    () => recordGemmPair(ctx, { first: product("dA"), second: product("dB") }, { ...tile, KL: 1 }),
    (e: Error) => e instanceof ConfigError && /no k lanes/.test(e.message),
  );
});

addEventListener("unload", () => printWorst("gemm_pair_props_test.ts"));
