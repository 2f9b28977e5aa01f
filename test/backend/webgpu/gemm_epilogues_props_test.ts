/**
 * The GEMM's epilogues when k is split, against the CPU reference. The bias (Backend.matmul with a bias,
 * which `linear` uses): added in the GEMM's store, or in the split-K reduce (SPLITK_REDUCE_BIAS), on the
 * device's own schedule and on a workgroup-tiled tile forced on the test adapter; odd sizes, batches, both
 * layouts, f32 and f16; the reduce record alone through Backend.run, and a wrong bias's errors. The LoRA
 * phase of the fused linear's output kernels with k split (only the first slice takes the LoRA term, the
 * reduce adds the bias), forced through `GemmProfile.choose` on both schedules, with dropout masks.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { DTypeError, ShapeError } from "../../../src/core/errors.ts";
import { cpuDevice } from "../../../mod.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import {
  DIRECT_PROFILE,
  type GemmProfile,
  type GemmTile,
  TILED_PROFILE,
} from "../../../src/backend/webgpu/gemm_plan.ts";
import type { FusedDropout } from "../../../src/backend/backend.ts";
import { SPLITK_REDUCE_BIAS } from "../../../src/backend/kernels/splitk_reduce.ts";
import {
  assertClose,
  factor,
  type FloatType,
  floatTypes,
  fusedLoraOnBoth,
  onBoth,
  printWorst,
  seedArb,
  values,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";

const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

const size = (max: number) => fc.oneof(fc.integer({ min: 1, max }), fc.constantFrom(1, 3, 4, 7, 16, 33));

const caseArb = fc.record({
  batch: fc.integer({ min: 1, max: 2 }),
  m: size(40),
  n: size(40),
  // Deep k with a small output takes the split-K path, whose reduce adds the bias.
  k: fc.oneof(size(40), fc.integer({ min: 300, max: 700 })),
  transA: fc.boolean(),
  transB: fc.boolean(),
});

type Case = typeof caseArb extends fc.Arbitrary<infer C> ? C : never;

async function checkCase(
  dev: Parameters<Parameters<typeof gpuTest>[1]>[0],
  c: Case,
  seed: number,
  dt: FloatType,
) {
  const av = values(c.batch * c.m * c.k, seed, dt), bv = values(c.batch * c.k * c.n, seed + 1, dt);
  const biasv = values(c.n, seed + 2, dt);
  const args = { ...c, aBatch: c.batch, bBatch: c.batch };
  const r = await onBoth(dev, dt, (u) => u.be.matmul(u.up(av), u.up(bv), args, u.up(biasv)));
  assertClose("matmul + bias", r.gpu[0], r.cpu[0], dt);
}

gpuTest("matmul with a bias epilogue matches the CPU (device schedule, split-K when deep)", async (dev) => {
  await fc.assert(fc.asyncProperty(caseArb, seedArb, f, (c, seed, dt) => checkCase(dev, c, seed, dt)), {
    numRuns: 20,
  });
});

gpuTest("matmul with a bias epilogue matches the CPU on a forced workgroup tile (32x128)", async (dev) => {
  const be = dev.backend as WebGpuBackend;
  const own = be.gemmProfile;
  const tile = TILED_PROFILE.tiles.find((t) => t.BM === 32 && t.BN === 128)!;
  be.gemmProfile = { schedule: "tiled", tiles: [tile] } satisfies GemmProfile;
  try {
    await fc.assert(fc.asyncProperty(caseArb, seedArb, f, (c, seed, dt) => checkCase(dev, c, seed, dt)), {
      numRuns: 5,
    });
  } finally {
    be.gemmProfile = own;
  }
});

gpuTest("splitk_reduce_bias through Backend.run matches the CPU", async (dev) => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 60 }),
      fc.integer({ min: 1, max: 9 }),
      // The direct sum or one round of staged fetches (up to 20 slices), or two or three rounds (60-140).
      fc.oneof(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 60, max: 140 })),
      factor(-3, 3),
      seedArb,
      f,
      async (cols, rows, splits, alpha, seed, dt) => {
        const n = rows * cols;
        const v = values(n * splits, seed, "f32"), bv = values(cols, seed + 1, dt);
        const r = await onBoth(dev, dt, (u) => {
          // The partial sums are f32 whatever the output type.
          const part = u.be.upload(v, "f32");
          const [y] = u.be.run(SPLITK_REDUCE_BIAS, [part, u.up(bv)], { n, splits, alpha, dtype: dt, cols });
          u.be.free(part);
          return y;
        });
        assertClose("splitk_reduce_bias", r.gpu[0], r.cpu[0], dt);
      },
    ),
    { numRuns: 20 },
  );
});

gpuTest("a bias that does not fit: ShapeError / DTypeError naming matmul, nothing allocated", (dev) => {
  for (const be of [dev.backend, cpuDevice().backend]) {
    const a = be.upload(values(6, 1, "f32"), "f32"), b = be.upload(values(12, 2, "f32"), "f32");
    const bias3 = be.upload(values(3, 3, "f32"), "f32");
    const args = { batch: 1, aBatch: 1, bBatch: 1, m: 2, k: 3, n: 4, transA: false, transB: false };
    const before = be.memory();
    assert.throws(
      () => be.matmul(a, b, args, bias3),
      (e) => e instanceof ShapeError && /matmul/.test(e.message),
    );
    assert.deepEqual(be.memory(), before);
    if (be.supportsDType("f16")) {
      const bias16 = be.upload(values(4, 3, "f16"), "f16");
      const mid = be.memory();
      assert.throws(
        () => be.matmul(a, b, args, bias16),
        (e) => e instanceof DTypeError && /matmul/.test(e.message),
      );
      assert.deepEqual(be.memory(), mid);
      be.free(bias16);
    }
    for (const s of [a, b, bias3]) be.free(s);
  }
});

const dropoutArb: fc.Arbitrary<FusedDropout | null> = fc.oneof(
  fc.constant(null),
  fc.record({
    p: fc.double({ min: 0.1, max: 0.7, noNaN: true }),
    seed: fc.integer({ min: 0, max: 0xffffffff }),
    position: fc.constantFrom<"pre" | "post">("pre", "post"),
  }),
);

for (
  const [schedule, tile] of [["tiled", TILED_PROFILE.tiles[1]], [
    "direct",
    DIRECT_PROFILE.tiles.at(-1)!,
  ]] as const
) {
  gpuTest(
    `fused LoRA with k split (${schedule} ${tile.BM}x${tile.BN}): forward and backward match the CPU`,
    async (dev) => {
      const be = dev.backend as WebGpuBackend;
      const own = be.gemmProfile;
      // Every product split into 3 slices (the LoRA output kernels too), whatever the planner would do.
      const t: GemmTile = tile;
      be.gemmProfile = { schedule, tiles: [t], choose: () => ({ tile: t, splits: 3 }) };
      try {
        await fc.assert(
          fc.asyncProperty(
            fc.record({
              m: size(24),
              // k of the output products is inF (forward) or outF (dx): deep enough for 3 slices.
              inF: fc.integer({ min: 12, max: 60 }),
              outF: fc.integer({ min: 12, max: 60 }),
              rank: fc.constantFrom(1, 4, 7),
              bias: fc.boolean(),
              dropout: dropoutArb,
            }),
            seedArb,
            f,
            async (c, seed, dt) => {
              const r = await fusedLoraOnBoth(dev, dt, c, seed);
              for (const [i, what] of ["y", "dA", "dB", "dx"].entries()) {
                assertClose(`split-K lora ${what}`, r.gpu[i], r.cpu[i], dt);
              }
            },
          ),
          { numRuns: 5 },
        );
      } finally {
        be.gemmProfile = own;
      }
    },
  );
}

Deno.test({
  name: "GEMM epilogue errors summary",
  ignore: gpu === null,
  fn: () => printWorst("gemm epilogues"),
});
