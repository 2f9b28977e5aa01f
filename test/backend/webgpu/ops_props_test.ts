/**
 * Every public op on WebGPU tensors against the same op on the CPU reference: forward values and the
 * gradients of every input, for f32 and f16, as fast-check properties over shapes and data.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as ops from "../../../mod.ts";
import { cpuDevice, type Device, type Tensor, tensor } from "../../../mod.ts";
import {
  assertClose,
  type Dist,
  factor,
  type FloatType,
  floatTypes,
  MIN_NORMAL_F32,
  note,
  printWorst,
  seedArb,
  TOL,
  values,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";

const RUNS = 20;
const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

/** One input of an op case. */
interface Input {
  shape: number[];
  dist?: Dist;
  /** Whether the gradient of this input is checked (default true). */
  grad?: boolean;
}

/** The values of input `i` of a case drawn with `seed` (what every run of the case uploads). */
function inputValues(inp: Input, i: number, seed: number, dt: FloatType): Float32Array {
  return values(inp.shape.reduce((p, d) => p * d, 1), seed + i, dt, inp.dist);
}

/**
 * Runs `fn` on `device`; returns the output and the gradients of the inputs that require them. With
 * `magnitudes`, every input and the upstream gradient are taken as their absolute values (the terms'
 * sizes for {@link compareOp}'s reduced gradients).
 */
async function runOn(
  device: Device,
  dt: FloatType,
  inputs: Input[],
  seed: number,
  fn: (xs: Tensor[]) => Tensor,
  magnitudes = false,
): Promise<Float32Array[]> {
  const opts = { device, dtype: dt };
  const vals = (v: Float32Array) => (magnitudes ? v.map(Math.abs) : v);
  const xs = inputs.map((inp, i) =>
    tensor(vals(inputValues(inp, i, seed, dt)), inp.shape, { ...opts, requiresGrad: inp.grad ?? true })
  );
  const y = fn(xs);
  const out = [Float32Array.from(await y.data())];
  if (y.requiresGrad) {
    y.backward(tensor(vals(values(y.size, seed + 99, dt)), y.shape, opts));
    for (const x of xs) if (x.requiresGrad) out.push(Float32Array.from(await x.grad!.data()));
  }
  for (const x of [...xs, y]) x.dispose();
  return out;
}

/**
 * Checks one op application on WebGPU against the CPU (values and gradients). For a sum (`ofMagnitudes`),
 * the value's error is measured against the same op of the inputs' absolute values instead of against
 * the value: terms that cancel fix their sum only to f32's rounding of the terms (fast-check drew a mean
 * of 360 normals whose terms add up to 14,321 times its size in magnitude: the CPU's own f32 sum was
 * 1.5e-5 off, the GPU's 1.5e-4), so there the value's relative error says nothing about the kernel. The
 * gradient of a broadcast input (fewer elements than the output) is such a sum too, of the upstream
 * gradient over the broadcast dimensions: its error is measured against the gradient of the same op over
 * absolute inputs and upstream gradient (fast-check on the H200: add of [2, 4, 7, 7] and [1], seed
 * 2147483623, whose 392 terms cancel; relative error 1.7e-4).
 */
async function compareOp(
  name: string,
  dev: Device,
  dt: FloatType,
  inputs: Input[],
  seed: number,
  fn: (xs: Tensor[]) => Tensor,
  ofMagnitudes = false,
): Promise<void> {
  const ours = await runOn(dev, dt, inputs, seed, fn);
  const ref = await runOn(cpuDevice(), dt, inputs, seed, fn);
  if (ours.length !== ref.length) {
    throw new Error(`${name}: ${ours.length} results on WebGPU, ${ref.length} on CPU`);
  }
  const outSize = ours[0].length;
  const reduced = inputs.filter((inp) => inp.grad ?? true).map((inp) =>
    inp.shape.reduce((p, d) => p * d, 1) < outSize
  );
  const mags = reduced.some((r) => r) ? await runOn(cpuDevice(), dt, inputs, seed, fn, true) : [];
  ours.forEach((o, i) => {
    if (i > 0 && reduced[i - 1]) {
      let diff = 0, size = 0;
      for (let j = 0; j < o.length; j++) {
        diff += (o[j] - ref[i][j]) ** 2;
        size += mags[i][j] ** 2;
      }
      const e = size === 0 ? Math.sqrt(diff) : Math.sqrt(diff) / Math.sqrt(size);
      note(`${name} grad ${i - 1} (reduced, against its terms' magnitude) ${dt}`, e);
      assert.ok(
        e <= TOL[dt],
        `${name} grad ${i - 1} (${dt}): error ${e} of its terms' magnitude > ${TOL[dt]}`,
      );
    } else if (i > 0 || !ofMagnitudes) {
      assertClose(`${name} ${i === 0 ? "value" : `grad ${i - 1}`}`, o, ref[i], dt);
    }
  });
  if (ofMagnitudes) {
    // The same op on the CPU over the inputs' absolute values.
    const absXs = inputs.map((inp, i) =>
      tensor(inputValues(inp, i, seed, dt).map(Math.abs), inp.shape, { device: cpuDevice(), dtype: dt })
    );
    const magT = fn(absXs);
    const mag = Float32Array.from(await magT.data());
    for (const t of [...absXs, magT]) t.dispose();
    let diff = 0, size = 0;
    for (let j = 0; j < mag.length; j++) {
      diff += (ours[0][j] - ref[0][j]) ** 2;
      size += mag[j] ** 2;
    }
    const e = Math.sqrt(diff) / Math.sqrt(size);
    note(`${name} value (against its terms' magnitude) ${dt}`, e);
    assert.ok(e <= TOL[dt], `${name} value (${dt}): error ${e} of its terms' magnitude > ${TOL[dt]}`);
  }
}

/** Registers a property: `arb` draws a case, `make` turns it into inputs and the op. */
function opProperty<C>(
  name: string,
  arb: fc.Arbitrary<C>,
  make: (c: C) => { inputs: Input[]; fn: (xs: Tensor[]) => Tensor; ofMagnitudes?: boolean },
  runs = RUNS,
): void {
  gpuTest(`op ${name} on WebGPU matches the CPU (values and gradients)`, async (dev) => {
    await fc.assert(
      fc.asyncProperty(arb, seedArb, f, async (c, seed, dt) => {
        const { inputs, fn, ofMagnitudes } = make(c);
        await compareOp(name, dev, dt, inputs, seed, fn, ofMagnitudes);
      }),
      { numRuns: runs },
    );
  });
}

const shapeArb = (maxRank = 4, maxDim = 9) =>
  fc.array(fc.integer({ min: 1, max: maxDim }), { minLength: 1, maxLength: maxRank });

/** Two shapes that broadcast together. */
const broadcastArb = shapeArb(4, 7).chain((out) =>
  fc.tuple(
    fc.constant(out),
    fc.array(fc.boolean(), { minLength: out.length, maxLength: out.length }),
    fc.integer({ min: 0, max: out.length - 1 }),
  ).map(([o, ones, drop]) => [o, o.map((d, i) => (ones[i] ? 1 : d)).slice(drop)] as [number[], number[]])
);

const binaries = { add: ops.add, sub: ops.sub, mul: ops.mul, div: ops.div, maximum: ops.maximum };
for (const [name, op] of Object.entries(binaries)) {
  opProperty(name, fc.tuple(broadcastArb, fc.boolean()), ([[a, b], swap]) => ({
    inputs: [{ shape: swap ? b : a }, {
      shape: swap ? a : b,
      dist: name === "div" ? { lo: 0.5, hi: 3 } : "normal",
    }],
    fn: ([x, y]) => op(x, y),
  }));
}

const unaries: Record<string, [(x: Tensor) => Tensor, Dist]> = {
  neg: [ops.neg, "normal"],
  exp: [ops.exp, { lo: -4, hi: 4 }],
  log: [ops.log, { lo: 0.2, hi: 10 }],
  sqrt: [ops.sqrt, { lo: 0.2, hi: 10 }],
  rsqrt: [ops.rsqrt, { lo: 0.2, hi: 10 }],
  sigmoid: [ops.sigmoid, { lo: -8, hi: 8 }],
  silu: [ops.silu, { lo: -8, hi: 8 }],
  relu: [ops.relu, "normal"],
  square: [ops.square, "normal"],
  sin: [ops.sin, { lo: -50, hi: 50 }],
  cos: [ops.cos, { lo: -50, hi: 50 }],
};
for (const [name, [op, dist]] of Object.entries(unaries)) {
  opProperty(name, shapeArb(), (shape) => ({ inputs: [{ shape, dist }], fn: ([x]) => op(x) }));
}

gpuTest("sigmoid gradient near saturation (shrunk counterexample): within f32 tolerance", async (dev) => {
  // fast-check found shape [1], seed 2, f32: the backward σ(1 − σ) cancelled where σ(x) rounds near 1
  // (relative error 1.4e-4); ops.sigmoid now differentiates as σ(x)·σ(−x).
  await compareOp(
    "sigmoid",
    dev,
    "f32",
    [{ shape: [1], dist: { lo: -8, hi: 8 } }],
    2,
    ([x]) => ops.sigmoid(x),
  );
});

opProperty("scale", fc.tuple(shapeArb(), factor(-5, 5)), ([shape, s]) => ({
  inputs: [{ shape }],
  fn: ([x]) => ops.scale(x, s),
}));

gpuTest(
  "scale by a subnormal factor (shrunk counterexample): off by at most the f32 subnormal range",
  async (dev) => {
    // fast-check found scale([1], -2.8e-45): the CPU keeps the subnormal products, a GPU may flush them
    // to zero (WGSL allows that), so only an absolute bound of the smallest normal f32 holds.
    const s = -2.816120803871486e-45;
    const fn = ([x]: Tensor[]) => ops.scale(x, s);
    const ours = await runOn(dev, "f32", [{ shape: [1] }], 1237967277, fn);
    const ref = await runOn(cpuDevice(), "f32", [{ shape: [1] }], 1237967277, fn);
    for (let i = 0; i < 2; i++) {
      assert.ok(
        Math.abs(ours[i][0] - ref[i][0]) <= MIN_NORMAL_F32,
        `result ${i}: ${ours[i][0]} vs ${ref[i][0]}`,
      );
    }
  },
);

opProperty(
  "detach",
  shapeArb(),
  (shape) => ({ inputs: [{ shape, grad: false }], fn: ([x]) => ops.detach(x) }),
);

gpuTest("op cast f32 ⇄ f16 on WebGPU matches the CPU (values and gradients)", async (dev) => {
  if (!dev.supportsDType("f16")) return;
  await fc.assert(
    fc.asyncProperty(shapeArb(), seedArb, async (shape, seed) => {
      await compareOp("cast", dev, "f16", [{ shape }], seed, ([x]) => ops.cast(ops.cast(x, "f32"), "f16"));
    }),
    { numRuns: RUNS },
  );
});

/** A shape and a non-empty subset of its axes (as a number when there is one). */
const dimsArb = shapeArb().chain((shape) =>
  fc.tuple(
    fc.constant(shape),
    fc.subarray([...shape.keys()], { minLength: 1 }),
    fc.boolean(),
    fc.boolean(),
  )
);
opProperty("sum", dimsArb, ([shape, dims, keep, all]) => ({
  inputs: [{ shape }],
  fn: ([x]) => (all ? ops.sum(x) : ops.sum(x, dims.length === 1 ? dims[0] : dims, keep)),
  ofMagnitudes: true,
}));
opProperty("mean", dimsArb, ([shape, dims, keep, all]) => ({
  inputs: [{ shape }],
  fn: ([x]) => (all ? ops.mean(x) : ops.mean(x, dims, keep)),
  ofMagnitudes: true,
}));
// fast-check's shrunk case on Dawn over SwiftShader: the mean of all of [3, 6, 5, 4], seed 0 (its terms'
// magnitudes add up to 14,321 times the result, so the value's own relative error was 1.5e-4).
gpuTest(
  "op mean of a [3, 6, 5, 4] tensor whose terms cancel (seed 0) is within f32 of its terms' size",
  async (dev) => {
    await compareOp("mean", dev, "f32", [{ shape: [3, 6, 5, 4] }], 0, ([x]) => ops.mean(x), true);
  },
);

// fast-check's case on the H200 (Deno's WebGPU): the gradient of the [1] input of add([2, 4, 7, 7], [1]) is
// the sum of 392 upstream values that cancel (seed 2147483623: relative error 1.7e-4 against the value).
gpuTest(
  "op add's gradient of a broadcast [1] input (392 terms that cancel, seed 2147483623) is within f32 of its terms' size",
  async (dev) => {
    await compareOp(
      "add",
      dev,
      "f32",
      [{ shape: [2, 4, 7, 7] }, { shape: [1] }],
      2147483623,
      ([x, y]) => ops.add(x, y),
    );
  },
);

opProperty("broadcastTo", broadcastArb, ([out, small]) => ({
  inputs: [{ shape: small }],
  fn: ([x]) => ops.broadcastTo(x, out),
}));

opProperty("reshape", shapeArb(), (shape) => ({
  inputs: [{ shape }],
  fn: ([x]) => ops.reshape(x, [-1, shape[shape.length - 1]]),
}));

const permArb = shapeArb(5, 6).chain((shape) =>
  fc.tuple(fc.constant(shape), fc.shuffledSubarray([...shape.keys()], { minLength: shape.length }))
);
opProperty(
  "permute",
  permArb,
  ([shape, perm]) => ({ inputs: [{ shape }], fn: ([x]) => ops.permute(x, perm) }),
);
opProperty("transpose", permArb, ([shape, perm]) => ({
  inputs: [{ shape }],
  fn: ([x]) => ops.transpose(x, perm[0], -1),
}));

const concatArb = shapeArb(3, 6).chain((shape) =>
  fc.tuple(
    fc.constant(shape),
    fc.integer({ min: 0, max: shape.length - 1 }),
    fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 1, maxLength: 3 }),
  )
);
opProperty("concat", concatArb, ([shape, d, lens]) => ({
  inputs: lens.map((len) => ({ shape: shape.map((s, i) => (i === d ? len : s)) })),
  fn: (xs) => ops.concat(xs, d),
}));

const sliceArb = shapeArb(3, 8).chain((shape) =>
  fc.integer({ min: 0, max: shape.length - 1 }).chain((d) =>
    fc.tuple(fc.constant(shape), fc.constant(d), fc.nat(shape[d]), fc.nat(shape[d]))
  )
);
opProperty("slice", sliceArb, ([shape, d, s, e]) => ({
  inputs: [{ shape }],
  fn: ([x]) => ops.slice(x, d, Math.min(s, e), Math.max(s, e)),
}));

const mmDim = fc.oneof(fc.integer({ min: 1, max: 100 }), fc.constantFrom(1, 63, 64, 65, 97));
const matmulArb = fc.record({
  batch: fc.array(fc.integer({ min: 1, max: 3 }), { maxLength: 2 }),
  aBatch: fc.boolean(),
  bBatch: fc.boolean(),
  m: mmDim,
  k: mmDim,
  n: mmDim,
});
opProperty("matmul", matmulArb, (c) => ({
  inputs: [
    { shape: [...(c.aBatch ? c.batch : []), c.m, c.k] },
    { shape: [...(c.bBatch ? c.batch : []), c.k, c.n] },
  ],
  fn: ([a, b]) => ops.matmul(a, b),
}));

const linearArb = fc.record({
  lead: fc.array(fc.integer({ min: 1, max: 20 }), { minLength: 1, maxLength: 2 }),
  inF: mmDim,
  outF: mmDim,
  bias: fc.boolean(),
});
opProperty("linear", linearArb, (c) => ({
  inputs: [
    { shape: [...c.lead, c.inF] },
    { shape: [c.outF, c.inF] },
    ...(c.bias ? [{ shape: [c.outF] }] : []),
  ],
  fn: ([x, w, b]) => ops.linear(x, w, b ?? null),
}));

const softmaxArb = shapeArb(3, 40).chain((shape) =>
  fc.tuple(fc.constant(shape), fc.integer({ min: -shape.length, max: shape.length - 1 }))
);
opProperty("softmax", softmaxArb, ([shape, d]) => ({
  inputs: [{ shape, dist: { lo: -6, hi: 6 } }],
  fn: ([x]) => ops.softmax(x, d),
}));
opProperty("logSoftmax", softmaxArb, ([shape, d]) => ({
  inputs: [{ shape, dist: { lo: -6, hi: 6 } }],
  fn: ([x]) => ops.logSoftmax(x, d),
}));

// The last axis has at least 2 elements: over one element rmsNorm is x / sqrt(x² + eps), whose gradient
// eps / (x² + eps)^1.5 is pure cancellation, so both devices return rounding noise (see the named test).
const rmsArb = fc.tuple(shapeArb(2, 30), fc.integer({ min: 2, max: 40 }), fc.constantFrom(1e-6, 1e-5, 0.1));
opProperty("rmsNorm", rmsArb, ([lead, d, eps]) => ({
  inputs: [{ shape: [...lead, d] }, { shape: [d] }],
  fn: ([x, w]) => ops.rmsNorm(x, w, eps),
}));

gpuTest(
  "rmsNorm over a single element (shrunk counterexample): values match, gradients are both ~0",
  async (dev) => {
    // fast-check found shape [1], eps 1e-6, seed 0: the exact gradient is g·w·eps / (x² + eps)^1.5.
    const eps = 1e-6;
    const results = [];
    for (const device of [dev, cpuDevice()]) {
      results.push(
        await runOn(device, "f32", [{ shape: [1] }, { shape: [1] }], 0, ([x, w]) => ops.rmsNorm(x, w, eps)),
      );
    }
    const [ours, ref] = results;
    assertClose("rmsNorm single value", ours[0], ref[0], "f32");
    assertClose("rmsNorm single weight grad", ours[2], ref[2], "f32");
    const [x] = values(1, 0, "f32"), [w] = values(1, 1, "f32"), [g] = values(1, 99, "f32");
    // The exact gradient plus the rounding noise of its composed terms (about 2^-23 · |g w / x| each).
    const exact = Math.abs((g * w * eps) / (x * x + eps) ** 1.5);
    const bound = exact + 8 * 2 ** -23 * Math.abs((g * w) / x);
    for (const r of [ours, ref]) assert.ok(Math.abs(r[1][0]) <= bound, `dx ${r[1][0]} exceeds ${bound}`);
  },
);

gpuTest(
  "rmsNorm in f16 on rows of small RMS (shrunk counterexample): the same overflow as the CPU",
  async (dev) => {
    // fast-check found [5, 16, 2], eps 1e-6, seed 5: the composed backward's gradient with respect to
    // mean(x²) exceeds f16's range for a row of RMS ~0.025, so dx holds -Infinity there on both devices.
    if (!dev.supportsDType("f16")) return;
    const inputs = [{ shape: [5, 16, 2] }, { shape: [2] }];
    const fn = ([x, w]: Tensor[]) => ops.rmsNorm(x, w, 1e-6);
    const ours = await runOn(dev, "f16", inputs, 5, fn);
    const ref = await runOn(cpuDevice(), "f16", inputs, 5, fn);
    assert.ok(
      ref[1].some((v) => !Number.isFinite(v)),
      "the reference no longer overflows: revisit this test",
    );
    ours.forEach((o, i) => assertClose(`rmsNorm f16 overflow case ${i}`, o, ref[i], "f16"));
  },
);

const embeddingArb = fc.record({
  num: fc.integer({ min: 1, max: 40 }),
  width: fc.integer({ min: 1, max: 33 }),
  ids: fc.array(fc.array(fc.nat(), { minLength: 3, maxLength: 3 }), { minLength: 1, maxLength: 4 }),
});
opProperty("embedding", embeddingArb, (c) => ({
  inputs: [{ shape: [c.num, c.width] }],
  fn: ([w]) => ops.embedding(c.ids.map((row) => row.map((v) => v % c.num)), w),
}));

const ceArb = fc.record({
  n: fc.integer({ min: 1, max: 30 }),
  classes: fc.integer({ min: 1, max: 60 }),
  raw: fc.array(fc.nat(), { minLength: 30, maxLength: 30 }),
});
opProperty("crossEntropy", ceArb, (c) => ({
  inputs: [{ shape: [c.n, c.classes], dist: { lo: -5, hi: 5 } }],
  // Every fourth target is ignored, but never all of them (the mean over none is NaN).
  fn: ([logits]) =>
    ops.crossEntropy(logits, c.raw.slice(0, c.n).map((v, i) => (i % 4 === 3 ? -100 : v % c.classes))),
}));

const dropoutArb = fc.tuple(
  shapeArb(),
  fc.double({ min: 0, max: 0.9, noNaN: true }),
  fc.integer({ min: 0, max: 0xffffffff }),
  fc.boolean(),
);
opProperty("dropout", dropoutArb, ([shape, p, seed, training]) => ({
  inputs: [{ shape }],
  fn: ([x]) => ops.dropout(x, p, { seed, training }),
}));

Deno.test({ name: "op property errors summary", ignore: gpu === null, fn: () => printWorst("ops") });
