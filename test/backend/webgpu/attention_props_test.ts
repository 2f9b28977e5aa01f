/**
 * The attention kernels (src/backend/kernels/attention.ts) on WebGPU against their CPU reference, through
 * `causalAttention`: output and the gradients of q, k and v over random sizes (odd head widths, more keys
 * than one workgroup tile; the tiled kernels up to head width 128, the row kernels above: a 129 case),
 * grouped-query ratios, padding masks (rows of padding only included), sliding windows and cached keys,
 * f32 and f16.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { causalAttention, cpuDevice, type Device, mul, sum, tensor } from "../../../mod.ts";
import { assertClose, type FloatType, floatTypes, printWorst, TOL, values } from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";
import { Rng } from "../../../src/core/random.ts";

interface Case {
  batch: number;
  kvHeads: number;
  group: number;
  seq: number;
  past: number;
  dim: number;
  window: number;
  keyMask: Int32Array | null;
  seed: number;
}

async function run(device: Device, dtype: FloatType, c: Case): Promise<Float32Array[]> {
  const heads = c.kvHeads * c.group, keys = c.past + c.seq;
  const opts = { device, dtype, requiresGrad: true };
  const make = (shape: number[], s: number) =>
    tensor(values(shape.reduce((a, b) => a * b, 1), c.seed + s, dtype), shape, opts);
  const q = make([c.batch, heads, c.seq, c.dim], 0);
  const k = make([c.batch, c.kvHeads, keys, c.dim], 1);
  const v = make([c.batch, c.kvHeads, keys, c.dim], 2);
  const y = causalAttention(q, k, v, { keyMask: c.keyMask, window: c.window });
  const w = tensor(values(y.size, c.seed + 3, dtype), y.shape, { device, dtype });
  const loss = sum(mul(y, w));
  loss.backward();
  const out = [];
  for (const t of [y, q.grad!, k.grad!, v.grad!]) out.push(Float32Array.from(await t.data()));
  for (const t of [q, k, v, y, w, loss]) t.dispose();
  return out;
}

async function compare(dev: Device, dtype: FloatType, c: Case) {
  const ours = await run(dev, dtype, c), ref = await run(cpuDevice(), dtype, c);
  for (const i of [0, 1, 3]) {
    assertClose(["attention output", "attention dq", "", "attention dv"][i], ours[i], ref[i], dtype);
  }
  // dk sums p (dp − delta) q, which cancels to exactly 0 wherever a query sees one key (seq 1, a window
  // of 1: fast-check's first shrunk cases), leaving rounding noise on both sides. Relative to its own size
  // it is checked where it is not mostly cancellation; everywhere, its error is small next to dv's size.
  const norm = (a: Float32Array) => Math.sqrt(a.reduce((s, x) => s + x * x, 0));
  const err = norm(ours[2].map((x, j) => x - ref[2][j]));
  if (norm(ref[2]) > 1e-2 * norm(ref[3])) assertClose("attention dk", ours[2], ref[2], dtype);
  else {assert.ok(
      err <= TOL[dtype] * norm(ref[3]),
      `attention dk (${dtype}): error ${err} next to |dv| ${norm(ref[3])}`,
    );}
}

const caseArb = (dev: Device): fc.Arbitrary<[FloatType, Case]> =>
  fc.tuple(
    floatTypes(dev),
    fc.record({
      batch: fc.integer({ min: 1, max: 2 }),
      kvHeads: fc.integer({ min: 1, max: 3 }),
      group: fc.constantFrom(1, 2, 3),
      seq: fc.oneof(fc.integer({ min: 1, max: 20 }), fc.constantFrom(255, 257, 300)),
      past: fc.constantFrom(0, 0, 3),
      // Narrow heads only: each width is three pipelines to compile (seconds each on the software adapter
      // for the tiled kernels' unrolled register tiles); 64 and 65 are in the named cases.
      dim: fc.constantFrom(1, 3, 7, 16),
      window: fc.constantFrom(0, 0, 1, 4, 260),
      masked: fc.boolean(),
      seed: fc.integer({ min: 0, max: 1e9 }),
    }).map(({ masked, ...c }) => {
      const keys = c.past + c.seq;
      const rng = new Rng(c.seed + 1);
      const pad = Array.from({ length: c.batch }, () => Math.floor(rng.uniform() * Math.min(keys + 1, 4)));
      const keyMask = masked
        ? Int32Array.from(
          { length: c.batch * keys },
          (_, i) => (i % keys) >= pad[Math.floor(i / keys)] ? 1 : 0,
        )
        : null;
      return { ...c, keyMask };
    }),
  );

gpuTest(
  "causalAttention on WebGPU equals the CPU reference (forward, dq, dk, dv; f32 and f16)",
  async (dev) => {
    await fc.assert(fc.asyncProperty(caseArb(dev), ([dt, c]) => compare(dev, dt, c)), { numRuns: 12 });
  },
);

gpuTest("causalAttention on WebGPU: padding-only rows, a window, grouped heads and 300 keys", async (dev) => {
  const keyMask = Int32Array.from([0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]);
  const base = { batch: 2, kvHeads: 1, group: 3, seq: 7, past: 0, dim: 5, window: 0, keyMask, seed: 11 };
  await compare(dev, "f32", base);
  await compare(dev, "f32", { ...base, keyMask: null, window: 3, past: 2, seq: 5 });
  await compare(dev, "f32", { ...base, batch: 1, seq: 300, dim: 64, group: 2, keyMask: null });
  await compare(dev, "f32", { ...base, batch: 1, seq: 4, dim: 129, group: 1, keyMask: null });
  await compare(dev, "f32", { ...base, seq: 20, past: 3, dim: 65, window: 6, keyMask: null });
  if (dev.supportsDType("f16")) await compare(dev, "f16", base);
  // fast-check's shrunk cases: one key per query (dk cancels to 0).
  await compare(dev, "f32", { ...base, batch: 1, group: 1, seq: 1, dim: 1, keyMask: null });
  await compare(dev, "f32", { ...base, batch: 1, group: 1, seq: 255, dim: 1, window: 1, keyMask: null });
});

Deno.test({
  name: "attention property errors summary",
  ignore: gpu === null,
  fn: () => printWorst("attention"),
});
