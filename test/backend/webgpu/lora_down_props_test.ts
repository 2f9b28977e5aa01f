/**
 * The lora_down kernel (src/backend/kernels/lora_down.ts, wgsl/lora_down.wgsl): out = drop(X) · Q down to a
 * LoRA rank, against the CPU reference over random shapes (odd sizes, rank 1 to 64, both Q layouts, X
 * f32 or f16, Q f32 or X's type, dropout or not); the fused LoRA linear with its t and g made by
 * lora_down (the profile's `loraDown`) against the CPU reference; bad arguments are errors of our own.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ConfigError, cpuDevice, type Device, ShapeError } from "../../../mod.ts";
import type { Backend, FusedDropout, Storage } from "../../../src/backend/backend.ts";
import { LORA_DOWN, type LoraDownArgs } from "../../../src/backend/kernels/lora_down.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import {
  assertClose,
  dim,
  type FloatType,
  floatTypes,
  fusedDropoutArb,
  printWorst,
  seedArb,
  values,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";

const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

/** One down product: sizes, Q's layout, the types of X and Q, dropout, data seed. */
interface DownCase extends LoraDownArgs {
  xType: FloatType;
  qType: FloatType;
  seed: number;
}

const downArb: fc.Arbitrary<DownCase> = fc.record({
  m: dim(),
  k: dim(),
  // A few ranks, each a pipeline of its own (a rank-64 one takes seconds to compile on a software adapter):
  // below, at and past a vec4, a summing round of 16, the unroll steps' bounds (16, 32) and the largest.
  r: fc.constantFrom(1, 3, 4, 7, 16, 17, 33, 64),
  layout: fc.constantFrom<"rk" | "kr">("rk", "kr"),
  xType: f,
  qType: f,
  dropout: fc.option(fc.record({ p: fc.double({ min: 0.05, max: 0.9, noNaN: true }), seed: seedArb }), {
    nil: null,
  }),
  seed: seedArb,
});

/** The case's output on one backend, its inputs freed (and checked to be: no storage left behind). */
async function runDown(be: Backend, c: DownCase): Promise<Float32Array> {
  const before = be.memory();
  const x = be.upload(values(c.m * c.k, c.seed, c.xType), c.xType);
  const q = be.upload(values(c.r * c.k, c.seed + 1, c.qType), c.qType);
  const [out] = be.run(LORA_DOWN, [x, q], c);
  const host = Float32Array.from(await be.read(out));
  for (const s of [x, q, out]) be.free(s);
  assert.deepEqual(be.memory(), before, "storages leaked");
  return host;
}

async function checkDown(dev: Device, c: DownCase): Promise<void> {
  if (!dev.supportsDType(c.xType) || !dev.supportsDType(c.qType)) return;
  const ours = await runDown(dev.backend, c), ref = await runDown(cpuDevice().backend, c);
  // Both sum the same products of the same (rounded) inputs: f32's accuracy whatever the input types.
  assertClose(`loraDown ${c.layout} r${c.r}${c.dropout ? " dropout" : ""}`, ours, ref, "f32");
}

gpuTest("lora_down matches the CPU reference (both layouts, f32 and f16, dropout)", async (dev) => {
  await fc.assert(fc.asyncProperty(downArb, async (c) => await checkDown(dev, c)), { numRuns: 40 });
});

// Edge shapes, each a named test: one row and one column, k without vec4 rows, a rank that is not a
// multiple of 4 in the [k, r] layout, the largest rank (four summing rounds), a rank one past a round.
for (
  const [name, c] of [
    ["one row, one input, rank 1", { m: 1, k: 1, r: 1 }],
    ["k = 5 (no vec4 rows of X)", { m: 19, k: 5, r: 8 }],
    ["rank 7", { m: 33, k: 64, r: 7 }],
    ["rank 64", { m: 9, k: 260, r: 64 }],
    ["rank 17", { m: 17, k: 129, r: 17 }],
  ] as const
) {
  for (const layout of ["rk", "kr"] as const) {
    gpuTest(`lora_down on ${name}, layout ${layout}, with dropout`, async (dev) => {
      await checkDown(dev, {
        ...c,
        layout,
        xType: "f32",
        qType: "f32",
        dropout: { p: 0.3, seed: 7 },
        seed: 3,
      });
    });
  }
}

Deno.test("lora_down: a rank outside 1..64 is a ConfigError, operands of the wrong size a ShapeError", () => {
  const be = cpuDevice().backend;
  const x = be.upload(new Float32Array(6), "f32"), q = be.upload(new Float32Array(6), "f32");
  try {
    for (const r of [0, 65]) {
      assert.throws(
        () => be.run(LORA_DOWN, [x, q], { m: 2, k: 3, r, layout: "rk", dropout: null }),
        (e: unknown) => e instanceof ConfigError && /loraDown: rank/.test(e.message),
      );
    }
    assert.throws(
      () => be.run(LORA_DOWN, [x, q], { m: 3, k: 3, r: 2, layout: "kr", dropout: null }),
      (e: unknown) =>
        e instanceof ShapeError && /loraDown: X \[3, 3\] has 6 elements, expected 9/.test(e.message),
    );
    assert.throws(
      () => be.run(LORA_DOWN, [x, q], { m: 2, k: 3, r: 3, layout: "kr", dropout: null }),
      (e: unknown) => e instanceof ShapeError && /loraDown: Q \[3, 3\]/.test(e.message),
    );
  } finally {
    be.free(x);
    be.free(q);
  }
});

/** One fused LoRA problem whose t and g the profile sends to lora_down. */
interface FusedCase {
  m: number;
  inF: number;
  outF: number;
  rank: number;
  dropout: FusedDropout | null;
  dtype: FloatType;
  seed: number;
}

/** y, dA, dB, dx of the fused linear on one backend (inputs and outputs freed). */
async function runFused(be: Backend, c: FusedCase): Promise<Float32Array[]> {
  const before = be.memory();
  const v = (n: number, k: number) => be.upload(values(n, c.seed + k, c.dtype), c.dtype);
  const [x, w, a, b, dy] = [
    v(c.m * c.inF, 0),
    v(c.outF * c.inF, 1),
    v(c.rank * c.inF, 2),
    v(c.outF * c.rank, 3),
    v(c.m * c.outF, 4),
  ];
  const sizes = {
    m: c.m,
    inFeatures: c.inF,
    outFeatures: c.outF,
    rank: c.rank,
    scale: 2,
    dropout: c.dropout,
  };
  const y = be.loraForward({ x, w, a, b, bias: null, ...sizes });
  const g = be.loraBackward({ x, w, a, b, dy, needDx: true, ...sizes });
  const outs: Storage[] = [y, g.dA, g.dB, g.dx!];
  const host: Float32Array[] = [];
  for (const s of outs) host.push(Float32Array.from(await be.read(s)));
  for (const s of [x, w, a, b, dy, ...outs]) be.free(s);
  assert.deepEqual(be.memory(), before, "storages leaked");
  return host;
}

gpuTest("fused LoRA linear with t and g by lora_down matches the CPU reference", async (dev) => {
  const be = dev.backend as WebGpuBackend;
  const own = be.gemmProfile;
  be.gemmProfile = { ...own, loraDown: { minRows: 1, maxRank: 64 } };
  try {
    const arb: fc.Arbitrary<FusedCase> = fc.record({
      m: dim(),
      inF: dim(),
      outF: dim(),
      rank: fc.constantFrom(1, 7, 16, 33),
      dropout: fusedDropoutArb,
      dtype: f,
      seed: seedArb,
    });
    await fc.assert(
      fc.asyncProperty(arb, async (c) => {
        const ours = await runFused(be, c), ref = await runFused(cpuDevice().backend, c);
        const tag = c.dropout === null ? "" : ` drop-${c.dropout.position}`;
        ["y", "dA", "dB", "dx"].forEach((n, i) =>
          assertClose(`lora_down fused ${n}${tag}`, ours[i], ref[i], c.dtype)
        );
      }),
      { numRuns: 15 },
    );
    assert.ok(
      be.pipelineKeys().some((key) => key.startsWith("lora_down")),
      "the products down to the rank ran on lora_down",
    );
  } finally {
    be.gemmProfile = own;
  }
});

Deno.test({
  name: "lora_down property errors summary",
  ignore: gpu === null,
  fn: () => printWorst("lora down"),
});
