/**
 * The fused LoRA kernels on WebGPU against the CPU reference: the backend primitives, the `loraLinear`
 * op with autograd (2-D and 3-D inputs), and `LinearLoRA` with `useFused` true and false.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { cpuDevice, type Device, Linear, LinearLoRA, loraLinear, type Tensor, tensor } from "../../../mod.ts";
import type { FusedDropout } from "../../../src/backend/backend.ts";
import {
  assertClose,
  dim,
  type FloatType,
  floatTypes,
  fusedDropoutArb,
  onBoth,
  printWorst,
  seedArb,
  values,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";

const RUNS = { kernel: 60, op: 30, layer: 25 };
const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

/** One LoRA problem: sizes, bias, dropout, dtype, data seed. */
interface LoraCase {
  m: number;
  inF: number;
  outF: number;
  rank: number;
  bias: boolean;
  dropout: FusedDropout | null;
  scale: number;
  dtype: FloatType;
  seed: number;
}

const caseArb: fc.Arbitrary<LoraCase> = fc.record({
  m: dim(),
  inF: dim(),
  outF: dim(),
  rank: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.constantFrom(1, 7, 16, 63, 64)),
  bias: fc.boolean(),
  dropout: fusedDropoutArb,
  scale: fc.constantFrom(0.5, 2, 4),
  dtype: f,
  seed: seedArb,
});

/** Input data of a case, the same for both backends. */
function caseData(c: LoraCase) {
  const v = (n: number, k: number) => values(n, c.seed + k, c.dtype);
  return {
    x: v(c.m * c.inF, 0),
    w: v(c.outF * c.inF, 1),
    bias: v(c.outF, 2),
    a: v(c.rank * c.inF, 3),
    b: v(c.outF * c.rank, 4),
    dy: v(c.m * c.outF, 5),
  };
}

/** Runs the fused forward and backward primitives of `c` on both backends and compares. */
async function checkKernels(dev: Device, c: LoraCase, needDx = true): Promise<void> {
  const d = caseData(c);
  const sizes = {
    m: c.m,
    inFeatures: c.inF,
    outFeatures: c.outF,
    rank: c.rank,
    scale: c.scale,
    dropout: c.dropout,
  };
  const r = await onBoth(dev, c.dtype, (u) => {
    const [x, w, a, b] = [u.up(d.x), u.up(d.w), u.up(d.a), u.up(d.b)];
    const y = u.be.loraForward({ x, w, a, b, bias: c.bias ? u.up(d.bias) : null, ...sizes });
    const g = u.be.loraBackward({ x, w, a, b, dy: u.up(d.dy), needDx, ...sizes });
    return g.dx === null ? [y, g.dA, g.dB] : [y, g.dA, g.dB, g.dx];
  });
  const tag = c.dropout === null ? "" : ` drop-${c.dropout.position}`;
  assertClose(`loraForward y${tag}`, r.gpu[0], r.cpu[0], c.dtype);
  assertClose(`loraBackward dA${tag}`, r.gpu[1], r.cpu[1], c.dtype);
  assertClose(`loraBackward dB${tag}`, r.gpu[2], r.cpu[2], c.dtype);
  assert.equal(r.gpu.length, needDx ? 4 : 3);
  if (needDx) assertClose(`loraBackward dx${tag}`, r.gpu[3], r.cpu[3], c.dtype);
}

gpuTest("fused LoRA forward and backward kernels match the CPU reference", async (dev) => {
  await fc.assert(
    fc.asyncProperty(caseArb, fc.boolean(), async (c, needDx) => await checkKernels(dev, c, needDx)),
    { numRuns: RUNS.kernel },
  );
});

gpuTest("fused LoRA kernels: many tokens (split-K dA/dB) with few features", async (dev) => {
  const arb = fc.record({
    m: fc.integer({ min: 200, max: 1500 }),
    inF: fc.integer({ min: 1, max: 40 }),
    outF: fc.integer({ min: 1, max: 40 }),
    rank: fc.integer({ min: 1, max: 64 }),
    bias: fc.boolean(),
    dropout: fusedDropoutArb,
    scale: fc.constant(2),
    dtype: f,
    seed: seedArb,
  });
  await fc.assert(fc.asyncProperty(arb, async (c) => await checkKernels(dev, c)), {
    numRuns: RUNS.kernel / 5,
  });
});

// Edge shapes, each a single named test: one token, rank 1, one feature, rank above the features.
for (
  const [name, c] of [
    ["a single token", { m: 1, inF: 300, outF: 257, rank: 64 }],
    ["one input and one output feature", { m: 61, inF: 1, outF: 1, rank: 1 }],
    ["a rank above both feature counts", { m: 5, inF: 3, outF: 2, rank: 64 }],
    ["tile-edge sizes 65 x 127 x 129", { m: 65, inF: 127, outF: 129, rank: 16 }],
  ] as const
) {
  for (const dtype of ["f32", "f16"] as const) {
    for (const position of ["pre", "post"] as const) {
      gpuTest(`fused LoRA kernels on ${name} (${dtype}, dropout ${position})`, async (dev) => {
        if (!dev.supportsDType(dtype)) return;
        const dropout = { p: 0.3, seed: 99, position };
        await checkKernels(dev, { ...c, bias: true, dropout, scale: 2, dtype, seed: 5 });
      });
    }
  }
}

/** Tensors of a case on `device`: x (2-D or 3-D) and the layer weights. */
function caseTensors(c: LoraCase, device: Device, xShape: number[]) {
  const d = caseData(c);
  const o = { device, dtype: c.dtype };
  return {
    x: tensor(d.x, xShape, { ...o, requiresGrad: true }),
    w: tensor(d.w, [c.outF, c.inF], o),
    bias: c.bias ? tensor(d.bias, [c.outF], o) : null,
    a: tensor(d.a, [c.rank, c.inF], { ...o, requiresGrad: true }),
    b: tensor(d.b, [c.outF, c.rank], { ...o, requiresGrad: true }),
    dy: tensor(d.dy, [...xShape.slice(0, -1), c.outF], o),
  };
}

/** Output and gradients (y, dx, dA, dB) of the loraLinear op on `device`. */
async function opResults(c: LoraCase, device: Device, xShape: number[]): Promise<Float32Array[]> {
  const t = caseTensors(c, device, xShape);
  const y = loraLinear(t.x, t.w, t.bias, t.a, t.b, c.scale, c.dropout);
  assert.deepEqual(y.shape, [...xShape.slice(0, -1), c.outF]);
  y.backward(t.dy);
  const out = [];
  for (const r of [y, t.x.grad!, t.a.grad!, t.b.grad!]) out.push(Float32Array.from(await r.data()));
  for (const r of [y, t.x, t.w, t.bias, t.a, t.b, t.dy]) r?.dispose();
  return out;
}

gpuTest("loraLinear op with autograd (2-D and 3-D inputs) matches the CPU", async (dev) => {
  const arb = fc.tuple(caseArb, fc.constantFrom(1, 2, 3, 5));
  await fc.assert(
    fc.asyncProperty(arb, fc.boolean(), async ([c0, split], threeD) => {
      // A 3-D input [batch, tokens, in] flattens to m = batch · tokens rows.
      const c = threeD ? { ...c0, m: c0.m - (c0.m % split) || split } : c0;
      const xShape = threeD ? [split, c.m / split, c.inF] : [c.m, c.inF];
      const ours = await opResults(c, dev, xShape);
      const ref = await opResults(c, cpuDevice(), xShape);
      ["y", "dx", "dA", "dB"].forEach((k, i) => assertClose(`loraLinear ${k}`, ours[i], ref[i], c.dtype));
    }),
    { numRuns: RUNS.op },
  );
});

/** y and the gradients of x, lora_A and lora_B through a LinearLoRA layer built on `device`. */
async function layerResults(
  c: LoraCase,
  device: Device,
  useFused: boolean,
  xShape: number[],
): Promise<Float32Array[]> {
  const d = caseData(c);
  const base = new Linear(c.inF, c.outF, { bias: c.bias, device, dtype: c.dtype });
  base.loadStateDict({
    weight: { shape: [c.outF, c.inF], data: d.w },
    ...(c.bias ? { bias: { shape: [c.outF], data: d.bias } } : {}),
  });
  const drop = c.dropout;
  const layer = new LinearLoRA(base, {
    dim: c.rank,
    alpha: c.scale * c.rank,
    dropout: drop?.p ?? 0,
    dropoutPosition: drop?.position ?? "post",
    useFused,
  });
  layer.dropoutSeed = drop?.seed ?? null;
  layer.lora_A.loadStateDict({ weight: { shape: [c.rank, c.inF], data: d.a } });
  layer.lora_B.loadStateDict({ weight: { shape: [c.outF, c.rank], data: d.b } });
  const x = tensor(d.x, xShape, { device, dtype: c.dtype, requiresGrad: true });
  const y = layer.forward(x);
  y.backward(tensor(d.dy, [...xShape.slice(0, -1), c.outF], { device, dtype: c.dtype }));
  const grads: Tensor[] = [y, x.grad!, layer.lora_A.weight.grad!, layer.lora_B.weight.grad!];
  const out = [];
  for (const g of grads) out.push(Float32Array.from(await g.data()));
  return out;
}

gpuTest("LinearLoRA gradients on WebGPU match the CPU, fused and composed alike", async (dev) => {
  await fc.assert(
    fc.asyncProperty(caseArb, fc.boolean(), async (c, threeD) => {
      const xShape = threeD && c.m % 2 === 0 ? [2, c.m / 2, c.inF] : [c.m, c.inF];
      const ref = await layerResults(c, cpuDevice(), true, xShape);
      for (const useFused of [true, false]) {
        const ours = await layerResults(c, dev, useFused, xShape);
        ["y", "dx", "dA", "dB"].forEach((k, i) =>
          assertClose(`LinearLoRA ${useFused ? "fused" : "composed"} ${k}`, ours[i], ref[i], c.dtype)
        );
      }
    }),
    { numRuns: RUNS.layer },
  );
});

Deno.test({ name: "LoRA property errors summary", ignore: gpu === null, fn: () => printWorst("lora") });
