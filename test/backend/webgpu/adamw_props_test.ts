/**
 * The multi-tensor `adamw` kernel and the fused clipping kernels (`sum_squares`, `clip_coef`,
 * `scale_by`) on WebGPU against their CPU references, over random segment lists (odd sizes, many
 * segments, inactive ones, different step counts) in f32 and f16; and pack/unpack on both backends.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { Backend, Storage } from "../../../src/backend/backend.ts";
import { ADAMW, type AdamWArgs, type AdamWSegment } from "../../../src/backend/kernels/adamw.ts";
import {
  CLIP_COEF,
  SCALE_BY,
  SUM_SQUARES,
  SUM_SQUARES_CHUNK,
} from "../../../src/backend/kernels/grad_norm.ts";
import { packAlignment } from "../../../src/backend/packing.ts";
import { cpuDevice, type Device, DTypeError, ShapeError } from "../../../mod.ts";
import { assertClose, dim, type FloatType, floatTypes, printWorst, seedArb, values } from "./compare.ts";
import { relErr } from "../../helpers.ts";
import { gpu, gpuTest } from "./gpu.ts";

const RUNS = 25;
const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

/** A packed layout of segments of the given sizes (word-aligned starts) and its total. */
function layout(sizes: readonly number[], dtype: FloatType): { offsets: number[]; total: number } {
  const align = packAlignment(dtype);
  const offsets: number[] = [];
  let total = 0;
  for (const n of sizes) {
    const o = Math.ceil(total / align) * align;
    offsets.push(o);
    total = o + n;
  }
  return { offsets, total };
}

/** A random AdamW case: segments with sizes, activity and steps, hyperparameters and packed inputs. */
const adamwCase = fc.record({
  dtype: f,
  segs: fc.array(
    fc.record({
      size: fc.oneof(dim(300), fc.constant(1), fc.constant(0)),
      active: fc.boolean(),
      step: fc.integer({ min: 1, max: 50 }),
    }),
    { minLength: 1, maxLength: 40 },
  ),
  lr: fc.constantFrom(1e-3, 1e-2, 0.1),
  beta1: fc.constantFrom(0.9, 0.8, 0),
  beta2: fc.constantFrom(0.999, 0.99),
  eps: fc.constantFrom(1e-8, 1e-6),
  weightDecay: fc.constantFrom(0, 0.01, 0.1),
  seed: seedArb,
});

type AdamWCase = typeof adamwCase extends fc.Arbitrary<infer T> ? T : never;

/** Runs the kernel of `c` on a backend; returns the packed inputs and outputs as host arrays. */
async function runAdamW(be: Backend, c: AdamWCase) {
  const { offsets, total } = layout(c.segs.map((s) => s.size), c.dtype);
  const segments: AdamWSegment[] = c.segs.map((s, i) => ({ offset: offsets[i], ...s }));
  const p = values(total, c.seed, c.dtype), g = values(total, c.seed + 1, c.dtype);
  const m = values(total, c.seed + 2, "f32").map((v) => v * 0.1);
  const v = values(total, c.seed + 3, "f32", { lo: 0, hi: 0.5 }).map((x) => x * x);
  const ins: Storage[] = [
    be.upload(p, c.dtype),
    be.upload(g, c.dtype),
    be.upload(m, "f32"),
    be.upload(v, "f32"),
  ];
  const args: AdamWArgs = {
    total,
    segments,
    lr: c.lr,
    beta1: c.beta1,
    beta2: c.beta2,
    eps: c.eps,
    weightDecay: c.weightDecay,
  };
  const outs = be.run(ADAMW, ins, args);
  const host = [];
  for (const s of outs) host.push(Float32Array.from(await be.read(s)));
  for (const s of [...ins, ...outs]) be.free(s);
  return { p, m, v, segments, out: host };
}

/** Checks one case: every output close to the reference, inactive moments copied bit for bit. */
async function checkAdamW(dev: Device, c: AdamWCase): Promise<void> {
  const before = dev.backend.memory();
  const ours = await runAdamW(dev.backend, c);
  const ref = await runAdamW(cpuDevice().backend, c);
  assert.deepEqual(dev.backend.memory(), before, "GPU storages leaked");
  assertClose("adamw param", ours.out[0], ref.out[0], c.dtype);
  // The moments are f32 whatever the parameters are.
  assertClose("adamw exp_avg", ours.out[1], ref.out[1], "f32");
  assertClose("adamw exp_avg_sq", ours.out[2], ref.out[2], "f32");
  if (c.dtype === "f32") {
    // The update itself, not only the parameter it is added to (which would hide a wrong step).
    const step = (o: Float32Array) => o.map((x, i) => x - ours.p[i]);
    const e = relErr(step(ours.out[0]), step(ref.out[0]));
    assert.ok(e <= 1e-3, `adamw update: relative error ${e}`);
  }
  for (const s of ours.segments.filter((s) => !s.active)) {
    for (let i = s.offset; i < s.offset + s.size; i++) {
      assert.ok(
        Object.is(ours.out[1][i], ours.m[i]) && Object.is(ours.out[2][i], ours.v[i]),
        `inactive element ${i}`,
      );
    }
  }
}

gpuTest("adamw kernel matches the CPU over random segment lists (f32, f16)", async (dev) => {
  await fc.assert(fc.asyncProperty(adamwCase, (c) => checkAdamW(dev, c)), { numRuns: RUNS });
});

gpuTest("adamw kernel: 420 segments of LoRA shapes in one dispatch (f32 and f16)", async (dev) => {
  const sizes = Array.from({ length: 420 }, (_, i) => (i % 2 === 0 ? 16 * 67 : 61 * 16));
  for (const dtype of dev.supportsDType("f16") ? ["f32", "f16"] as const : ["f32"] as const) {
    await checkAdamW(dev, {
      dtype,
      segs: sizes.map((size, i) => ({ size, active: i % 7 !== 3, step: 1 + (i % 3) })),
      lr: 1e-3,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0.01,
      seed: 7,
    });
  }
});

gpuTest("adamw kernel: f16 parameters with eps 1e-8 and tiny gradients stay finite", async (dev) => {
  if (!dev.supportsDType("f16")) return; // refused in CI (gpu.ts); the CPU side is in test/optim
  const be = dev.backend;
  const n = 33;
  const ins = [
    be.upload(new Float32Array(n).fill(0.5), "f16"),
    be.upload(new Float32Array(n).fill(1e-7), "f16"),
  ];
  ins.push(be.fill(n, 0, "f32"), be.fill(n, 0, "f32"));
  const outs = be.run(ADAMW, ins, {
    total: n,
    segments: [{ offset: 0, size: n, step: 1, active: true }],
    lr: 1e-3,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0,
  });
  const p = await be.read(outs[0]);
  for (const s of [...ins, ...outs]) be.free(s);
  assert.ok(p.every((x) => Number.isFinite(x) && x < 0.5), `f16 parameters after one step: ${p.slice(0, 4)}`);
});

gpuTest("sum_squares, clip_coef and scale_by match the CPU (odd sizes, several chunks)", async (dev) => {
  await fc.assert(
    fc.asyncProperty(
      f,
      fc.oneof(dim(300), fc.integer({ min: 1, max: 3 * SUM_SQUARES_CHUNK + 7 })),
      fc.constantFrom(0.1, 1, 1e3),
      seedArb,
      async (dtype, n, maxNorm, seed) => {
        const x = values(n, seed, dtype);
        const run = async (be: Backend) => {
          const s = be.upload(x, dtype);
          const [part] = be.run(SUM_SQUARES, [s], { n });
          const [total, coef] = be.run(CLIP_COEF, [part], { n: part.size, maxNorm });
          const [y] = be.run(SCALE_BY, [s, coef], { n });
          const host = [await be.read(part), await be.read(total), await be.read(coef), await be.read(y)];
          for (const t of [s, part, total, coef, y]) be.free(t);
          return host.map((h) => Float32Array.from(h));
        };
        const ours = await run(dev.backend), ref = await run(cpuDevice().backend);
        assertClose("sum_squares", ours[0], ref[0], "f32");
        assertClose("clip_coef total", ours[1], ref[1], "f32");
        assertClose("clip_coef coef", ours[2], ref[2], "f32");
        assertClose("scale_by", ours[3], ref[3], dtype);
      },
    ),
    { numRuns: RUNS },
  );
});

gpuTest("pack and unpack copy segments exactly on both backends (f32, f16, odd sizes)", async (dev) => {
  await fc.assert(
    fc.asyncProperty(
      f,
      fc.array(fc.oneof(dim(300), fc.constant(0)), { minLength: 1, maxLength: 30 }),
      seedArb,
      async (dtype, sizes, seed) => {
        const { offsets, total } = layout(sizes, dtype);
        const parts = sizes.map((n, i) => values(n, seed + i, dtype));
        for (const be of [dev.backend, cpuDevice().backend]) {
          const ins = parts.map((v) => be.upload(v, dtype));
          const packed = be.pack(ins, offsets, total, dtype);
          const host = await be.read(packed);
          parts.forEach((v, i) =>
            assert.deepEqual(host.slice(offsets[i], offsets[i] + v.length), Float32Array.from(v))
          );
          const outs = be.unpack(packed, offsets, sizes);
          for (let i = 0; i < outs.length; i++) {
            assert.deepEqual(await be.read(outs[i]), Float32Array.from(parts[i]));
          }
          for (const s of [...ins, packed, ...outs]) {
            be.free(s);
          }
        }
      },
    ),
    { numRuns: RUNS },
  );
});

for (const [name, device] of [["CPU", () => cpuDevice()], ["WebGPU", () => gpu!]] as const) {
  const register = name === "CPU"
    ? (n: string, fn: (d: Device) => void) => Deno.test(n, () => fn(device()))
    : gpuTest;
  register(`pack/unpack refuse misaligned, overlapping and mistyped segments (${name})`, (dev) => {
    const be = dev.backend;
    const a = be.upload([1, 2, 3], "f32");
    assert.throws(() => be.pack([a, a], [0, 2], 6, "f32"), ShapeError);
    assert.throws(() => be.pack([a], [4], 6, "f32"), /outside the 6 packed elements/);
    assert.throws(() => be.unpack(a, [0, 1], [2, 2]), ShapeError);
    if (dev.supportsDType("f16")) {
      const h = be.upload([1, 2, 3], "f16");
      assert.throws(() => be.pack([h], [1], 4, "f16"), /not a multiple of 2/);
      assert.throws(() => be.pack([h], [0], 4, "f32"), DTypeError);
      be.free(h);
    }
    be.free(a);
  });
}

Deno.test({ name: "adamw property errors summary", ignore: gpu === null, fn: () => printWorst("adamw") });
