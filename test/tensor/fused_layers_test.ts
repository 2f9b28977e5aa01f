/**
 * The memory-lean decoder pieces (src/tensor/fused_layers.ts) against the compositions they replace, on
 * the CPU in f64 and f32 (values and gradients of every input) over random shapes, and on WebGPU against
 * the CPU (f32, f16); and that each forward leaves only its output (and RMSNorm's 1/rms) alive.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  add,
  cpuDevice,
  type Device,
  matmul,
  mean,
  mul,
  rsqrt,
  silu,
  square,
  sum,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import { fusedRmsNorm, rotaryEmbedding, siluMul } from "../../src/tensor/mod.ts";
import { Rng } from "../../src/core/random.ts";
import { gpu, noGpu } from "../backend/webgpu/gpu.ts";
import { assertClose } from "../backend/webgpu/compare.ts";

type Piece = "rmsNorm" | "siluMul" | "rope";

/** The rotate-half matrix of width d: (x · rot)[i] = −x[i + d/2] for i < d/2, x[i − d/2] after. */
function rotateHalf(d: number): number[] {
  const m = new Array(d * d).fill(0);
  for (let i = 0; i < d / 2; i++) {
    m[(i + d / 2) * d + i] = -1;
    m[i * d + i + d / 2] = 1;
  }
  return m;
}

async function run(
  piece: Piece,
  shape: number[],
  seed: number,
  device: Device,
  dtype: "f32" | "f64" | "f16",
  fused: boolean,
): Promise<Float32Array[] | Float64Array[]> {
  const rng = new Rng(seed);
  const n = shape.reduce((a, b) => a * b, 1), d = shape[shape.length - 1];
  const make = (s: number[], grad = true) =>
    tensor(Array.from({ length: s.reduce((a, b) => a * b, 1) }, () => rng.normal()), s, {
      device,
      dtype,
      requiresGrad: grad,
    });
  const x = make(shape), second = piece === "rmsNorm" ? make([d]) : piece === "siluMul" ? make(shape) : null;
  const cos = make([shape[shape.length - 2] ?? 1, d], false),
    sin = make([shape[shape.length - 2] ?? 1, d], false);
  const rot = tensor(rotateHalf(d), [d, d], { device, dtype });
  let y: Tensor;
  if (piece === "rmsNorm") {
    y = fused
      ? fusedRmsNorm(x, second!, 1e-5)
      : mul(mul(x, rsqrt(add(mean(square(x), -1, true), 1e-5))), second!);
  } else if (piece === "siluMul") {
    y = fused ? siluMul(x, second!) : mul(silu(x), second!);
  } else {
    y = fused ? rotaryEmbedding(x, cos, sin, rot) : add(mul(x, cos), mul(matmul(x, rot), sin));
  }
  const w = tensor(Array.from({ length: n }, () => rng.normal()), shape, { device, dtype });
  sum(mul(y, w)).backward();
  const out = [];
  for (const t of [y, x.grad!, ...(second ? [second.grad!] : [])]) {
    out.push(Float64Array.from(await t.data()));
  }
  return out;
}

const shapeArb = fc.tuple(
  fc.integer({ min: 1, max: 3 }),
  fc.integer({ min: 1, max: 7 }),
  fc.constantFrom(2, 4, 6, 10),
)
  .map(([a, b, d]) => [a, b, d]);
const pieceArb = fc.constantFrom<Piece>("rmsNorm", "siluMul", "rope");

Deno.test("fusedRmsNorm, siluMul and rotaryEmbedding equal their compositions with gradients (f64 1e-12, f32 1e-5)", async () => {
  await fc.assert(
    fc.asyncProperty(pieceArb, shapeArb, fc.integer({ min: 0, max: 1e6 }), async (piece, shape, seed) => {
      for (const [dt, tol] of [["f64", 1e-12], ["f32", 1e-5]] as const) {
        const ours = await run(piece, shape, seed, cpuDevice(), dt, true);
        const ref = await run(piece, shape, seed, cpuDevice(), dt, false);
        ours.forEach((o, i) =>
          o.forEach((v, j) =>
            assert.ok(
              Math.abs(v - ref[i][j]) <= tol * Math.max(1, Math.abs(ref[i][j])),
              `${piece} ${dt} output ${i}[${j}]: ${v} vs ${ref[i][j]}`,
            )
          )
        );
      }
    }),
    { numRuns: 60 },
  );
});

Deno.test("the lean pieces keep only their output (and RMSNorm's 1/rms per row) after the forward", () => {
  const be = cpuDevice().backend;
  const x = tensor(Array.from({ length: 60 }, (_, i) => Math.sin(i)), [3, 4, 5], { requiresGrad: true });
  const w = tensor([1, 2, 3, 4, 5], [5], { requiresGrad: true });
  tidy(() => {
    let before = be.memory().bytes;
    fusedRmsNorm(x, w, 1e-6);
    assert.equal(be.memory().bytes - before, (60 + 12) * 4);
    before = be.memory().bytes;
    siluMul(x, x);
    assert.equal(be.memory().bytes - before, 60 * 4);
  });
});

Deno.test({
  name: "fusedRmsNorm, siluMul and rotaryEmbedding on WebGPU equal the CPU (f32, f16)",
  ignore: noGpu,
  fn: async () => {
    for (const piece of ["rmsNorm", "siluMul", "rope"] as const) {
      for (const dt of gpu!.supportsDType("f16") ? ["f32", "f16"] as const : ["f32"] as const) {
        for (const shape of [[1, 1, 2], [2, 5, 6], [3, 7, 64]]) {
          const ours = await run(piece, shape, 9, gpu!, dt, true);
          const ref = await run(piece, shape, 9, cpuDevice(), dt, true);
          ours.forEach((o, i) => assertClose(`${piece} ${i}`, o, ref[i], dt));
        }
      }
    }
  },
});
