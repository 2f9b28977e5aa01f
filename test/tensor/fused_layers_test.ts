/**
 * The fused decoder pieces (src/tensor/fused_layers.ts: fusedRmsNorm, siluMul, rotaryHeads) against the
 * compositions they replace, values and the gradients of every input: on the CPU in f64 (1e-12), f32
 * (1e-5) and f16 (the composition transformers runs: RMSNorm in f32 then cast), and on WebGPU against
 * the CPU (f32, f16) and against the composition on WebGPU (f32, 1e-4). Shapes are random and odd, of
 * rank 1 to 3 for the norm and the product; eps, RoPE's theta and positions are random. Also: the
 * composed twins (leanRmsNorm, leanSiluMul, rotaryEmbedding) equal the plain compositions, each fused
 * forward keeps nothing but its output, and bad operands are errors naming the op.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  add,
  cast,
  cpuDevice,
  type Device,
  DTypeError,
  matmul,
  mean,
  mul,
  permute,
  reshape,
  rsqrt,
  ShapeError,
  silu,
  square,
  sum,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import {
  fusedRmsNorm,
  leanRmsNorm,
  leanSiluMul,
  rotaryEmbedding,
  rotaryHeads,
  siluMul,
} from "../../src/tensor/mod.ts";
import { Rng } from "../../src/core/random.ts";
import { gpu, noGpu } from "../backend/webgpu/gpu.ts";
import { TOL } from "../backend/webgpu/compare.ts";

type Piece = "rmsNorm" | "siluMul" | "rope";
/** Which implementation: the fused kernel op, its composed twin, or the plain composition of primitives. */
type Impl = "fused" | "twin" | "plain";
type DT = "f64" | "f32" | "f16";

interface Case {
  piece: Piece;
  /** rmsNorm, siluMul: the input's shape (rank 1-3). rope: [batch, seq, heads, dim]. */
  shape: number[];
  seed: number;
  eps: number;
  /** RoPE: transformers' tables for this theta, or (0) independent random cos and sin values. */
  theta: number;
  /** RoPE: one table per batch row (positions offset per row) rather than one for all rows. */
  perBatch: boolean;
  /** RMSNorm: whether the weight takes a gradient (the second backward kernel). */
  weightGrad: boolean;
}

/** The rotate-half matrix of width d: (x · rot)[i] = −x[i + d/2] for i < d/2, x[i − d/2] after. */
function rotateHalf(d: number): number[] {
  const m = new Array(d * d).fill(0);
  for (let i = 0; i < d / 2; i++) {
    m[(i + d / 2) * d + i] = -1;
    m[i * d + i + d / 2] = 1;
  }
  return m;
}

/** cos and sin [rows, seq, d]: Llama's tables at positions start + t (start random per row), or random. */
function ropeTables(rng: Rng, rows: number, seq: number, d: number, theta: number): [number[], number[]] {
  const cos: number[] = [], sin: number[] = [];
  for (let b = 0; b < rows; b++) {
    const start = Math.floor(rng.uniform() * 3000);
    for (let t = 0; t < seq; t++) {
      for (let i = 0; i < d; i++) {
        if (theta === 0) {
          cos.push(rng.normal());
          sin.push(rng.normal());
        } else {
          const angle = (start + t) * Math.pow(theta, -(2 * (i % (d / 2))) / d);
          cos.push(Math.cos(angle));
          sin.push(Math.sin(angle));
        }
      }
    }
  }
  return [cos, sin];
}

/** The output and the gradients of every input that takes one, of sum(y · r) for a random r. */
async function run(c: Case, device: Device, dtype: DT, impl: Impl): Promise<Float64Array[]> {
  const rng = new Rng(c.seed);
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const make = (s: number[], grad: boolean) =>
    tensor(Array.from({ length: size(s) }, () => rng.normal()), s, { device, dtype, requiresGrad: grad });
  let y: Tensor;
  const inputs: Tensor[] = [];
  if (c.piece === "rmsNorm") {
    const d = c.shape[c.shape.length - 1];
    const x = make(c.shape, true), w = make([d], c.weightGrad);
    inputs.push(x, ...(c.weightGrad ? [w] : []));
    if (impl === "fused") y = fusedRmsNorm(x, w, c.eps);
    else if (dtype === "f16") {
      // transformers' LlamaRMSNorm for half inputs: normalise in float32, cast back, then scale.
      const x32 = cast(x, "f32");
      y = mul(w, cast(mul(x32, rsqrt(add(mean(square(x32), -1, true), c.eps))), "f16"));
    } else if (impl === "twin") y = leanRmsNorm(x, w, c.eps);
    else y = mul(mul(x, rsqrt(add(mean(square(x), -1, true), c.eps))), w);
  } else if (c.piece === "siluMul") {
    const gate = make(c.shape, true), up = make(c.shape, true);
    inputs.push(gate, up);
    y = impl === "fused" ? siluMul(gate, up) : impl === "twin" ? leanSiluMul(gate, up) : mul(silu(gate), up);
  } else {
    const [b, s, h, d] = c.shape;
    const x = make([b, s, h * d], true);
    inputs.push(x);
    const rows = c.perBatch ? b : 1;
    const [cv, sv] = ropeTables(rng, rows, s, d, c.theta);
    const cos = tensor(cv, [rows, 1, s, d], { device, dtype }),
      sin = tensor(sv, [rows, 1, s, d], { device, dtype });
    if (impl === "fused") y = rotaryHeads(x, cos, sin, h);
    else {
      const t = permute(reshape(x, [b, s, h, d]), [0, 2, 1, 3]);
      const rot = tensor(rotateHalf(d), [d, d], { device, dtype });
      y = impl === "twin" ? rotaryEmbedding(t, cos, sin, rot) : add(mul(t, cos), mul(matmul(t, rot), sin));
    }
  }
  const r = tensor(Array.from({ length: y.size }, () => rng.normal()), y.shape, { device, dtype });
  sum(mul(y, r)).backward();
  const out = [Float64Array.from(await y.data())];
  for (const t of inputs) out.push(Float64Array.from(await t.grad!.data()));
  return out;
}

/**
 * The size of the two terms RMSNorm's input gradient subtracts, per element: |g w| r + |x| · |Σ g w x| r³
 * / n (f64, from the case's seed as {@link run} draws it). When g w is nearly parallel to x, or a row
 * holds one value, dx is their small difference and rounding errors scale with the terms, not with dx
 * (a row of one value has dx = g w r · eps / (x² + eps) exactly). Zeros for the other pieces.
 */
function termScale(c: Case): Float64Array | null {
  if (c.piece !== "rmsNorm") return null;
  const rng = new Rng(c.seed);
  const n = c.shape[c.shape.length - 1], size = c.shape.reduce((a, b) => a * b, 1);
  const draw = (k: number) => Array.from({ length: k }, () => rng.normal());
  const x = draw(size), w = draw(n), g = draw(size);
  const out = new Float64Array(size);
  for (let row = 0; row < size / n; row++) {
    let ss = 0, sgx = 0;
    for (let j = 0; j < n; j++) {
      ss += x[row * n + j] ** 2;
      sgx += g[row * n + j] * w[j] * x[row * n + j];
    }
    const r = 1 / Math.sqrt(ss / n + c.eps);
    for (let j = 0; j < n; j++) {
      const i = row * n + j;
      out[i] = Math.abs(g[i] * w[j]) * r + Math.abs(x[i] * sgx) * r ** 3 / n;
    }
  }
  return out;
}

const norm = (v: ArrayLike<number>) => Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));

/**
 * Element-wise: |a − b| ≤ tol · max(1, |b|), and for RMSNorm's dx (output 1) at most tol times its
 * terms' size ({@link termScale}) when that is larger.
 */
function assertNear(c: Case, ours: Float64Array[], ref: Float64Array[], tol: number, what: string): void {
  assert.equal(ours.length, ref.length, `${what}: output count`);
  const scale = termScale(c);
  ours.forEach((o, i) => {
    assert.equal(o.length, ref[i].length, `${what}: output ${i} length`);
    o.forEach((v, j) => {
      const s = Math.max(1, Math.abs(ref[i][j]), i === 1 && scale !== null ? scale[j] : 0);
      assert.ok(Math.abs(v - ref[i][j]) <= tol * s, `${what} output ${i}[${j}]: ${v} vs ${ref[i][j]}`);
    });
  });
}

/** Norm-wise: ‖a − b‖ ≤ tol · ‖b‖, or for RMSNorm's dx tol times its terms' norm when that is larger. */
function assertNormClose(
  c: Case,
  i: number,
  ours: ArrayLike<number>,
  ref: ArrayLike<number>,
  tol: number,
  what: string,
) {
  const scale = i === 1 ? termScale(c) : null;
  for (let j = 0; j < ref.length; j++) {
    // An f16 overflow must be the reference's too.
    if (!Number.isFinite(ref[j]) || !Number.isFinite(ours[j])) {
      assert.ok(Object.is(ours[j], ref[j]), `${what}: [${j}]`);
    }
  }
  const err = norm(Array.from(ours, (v, j) => (Number.isFinite(ref[j]) ? v - ref[j] : 0)));
  const size = Math.max(norm(ref), scale === null ? 0 : norm(scale));
  assert.ok(
    err <= tol * size || (size === 0 && err === 0),
    `${what}: error ${err} against a size of ${size}`,
  );
}

const dimArb = (max: number) => fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 1, max }));
const evenArb = fc.constantFrom(2, 4, 6, 10, 16);

/** Random cases; `big` bounds the last axis (kept small for lavapipe). */
function caseArb(big: number): fc.Arbitrary<Case> {
  const rest = {
    seed: fc.integer({ min: 0, max: 1e6 }),
    eps: fc.oneof(fc.constant(1e-6), fc.double({ min: 1e-8, max: 0.5, noNaN: true })),
    theta: fc.oneof(fc.constant(0), fc.double({ min: 10, max: 1e6, noNaN: true })),
    perBatch: fc.boolean(),
    weightGrad: fc.boolean(),
  };
  const flat = fc.record({
    piece: fc.constantFrom<Piece>("rmsNorm", "siluMul"),
    // Leading axes small, the normalised axis up to `big`: ranks 1 to 3 at lavapipe's sizes.
    shape: fc.tuple(fc.array(fc.integer({ min: 1, max: 5 }), { maxLength: 2 }), dimArb(big)).map((
      [lead, n],
    ) => [...lead, n]),
    ...rest,
  });
  const rope = fc.record({
    piece: fc.constant<Piece>("rope"),
    shape: fc.tuple(
      fc.integer({ min: 1, max: 3 }),
      fc.integer({ min: 1, max: 7 }),
      fc.integer({ min: 1, max: 3 }),
      evenArb,
    )
      .map((s) => [...s]),
    ...rest,
  });
  return fc.oneof(flat, rope);
}

async function checkCpu(c: Case): Promise<void> {
  const cpu = cpuDevice();
  for (const [dt, tol] of [["f64", 1e-12], ["f32", 1e-5]] as const) {
    const fused = await run(c, cpu, dt, "fused");
    assertNear(c, fused, await run(c, cpu, dt, "plain"), tol, `${c.piece} ${dt} fused vs plain`);
    assertNear(
      c,
      await run(c, cpu, dt, "twin"),
      await run(c, cpu, dt, "plain"),
      tol,
      `${c.piece} ${dt} twin`,
    );
  }
  // f16: the kernels round where the composition stores; sums and f16 gradients differ in rounding.
  const fused = await run(c, cpu, "f16", "fused"), plain = await run(c, cpu, "f16", "plain");
  fused.forEach((o, i) => assertNormClose(c, i, o, plain[i], 1e-2, `${c.piece} f16 output ${i}`));
}

Deno.test("fusedRmsNorm, siluMul and rotaryHeads equal their compositions with gradients on the CPU (f64 1e-12, f32 1e-5, f16 1e-2)", async () => {
  await fc.assert(fc.asyncProperty(caseArb(70), checkCpu), { numRuns: 60 });
});

Deno.test("fused layers on the CPU, named cases: rank 1, a width-1 row, a head width of 2, per-batch tables", async () => {
  const base = { seed: 7, eps: 1e-5, theta: 10000, perBatch: false, weightGrad: true };
  await checkCpu({ ...base, piece: "rmsNorm", shape: [13] });
  await checkCpu({ ...base, piece: "rmsNorm", shape: [3, 1] });
  await checkCpu({ ...base, piece: "rmsNorm", shape: [1], eps: 1e-8, seed: 0 });
  await checkCpu({ ...base, piece: "siluMul", shape: [1] });
  await checkCpu({ ...base, piece: "rope", shape: [2, 3, 1, 2] });
  await checkCpu({ ...base, piece: "rope", shape: [3, 5, 2, 6], perBatch: true, theta: 0 });
});

Deno.test("the fused forwards keep only their output; gradients flow only where asked", () => {
  const be = cpuDevice().backend;
  const x = tensor(Array.from({ length: 60 }, (_, i) => Math.sin(i)), [3, 4, 5], { requiresGrad: true });
  const w = tensor([1, 2, 3, 4, 5], [5]);
  tidy(() => {
    let before = be.memory().bytes;
    fusedRmsNorm(x, w, 1e-6);
    assert.equal(be.memory().bytes - before, 60 * 4);
    before = be.memory().bytes;
    siluMul(x, x);
    assert.equal(be.memory().bytes - before, 60 * 4);
    const cos = tensor(Array.from({ length: 8 }, (_, i) => Math.cos(i)), [4, 2]);
    const qx = tensor(Array.from({ length: 48 }, (_, i) => i), [3, 4, 4], { requiresGrad: true });
    before = be.memory().bytes;
    const q = rotaryHeads(qx, cos, cos, 2);
    assert.deepEqual(q.shape, [3, 2, 4, 2]);
    assert.equal(be.memory().bytes - before, 48 * 4);
    sum(fusedRmsNorm(x, w, 1e-6)).backward();
    assert.ok(x.grad !== null && w.grad === null);
  });
});

Deno.test("fused layers: bad operands are ShapeErrors or DTypeErrors naming the op", () => {
  const x = tensor(new Array(24).fill(1), [2, 3, 4]);
  assert.throws(
    () => fusedRmsNorm(x, tensor([1, 2, 3]), 1e-5),
    (e) => e instanceof ShapeError && /fusedRmsNorm/.test(e.message),
  );
  assert.throws(
    () => fusedRmsNorm(x, tensor([1, 2, 3, 4], [4], { dtype: "f64" }), 1e-5),
    (e) => e instanceof DTypeError && /fusedRmsNorm/.test(e.message),
  );
  assert.throws(
    () => siluMul(x, reshape(x, [6, 4])),
    (e) => e instanceof ShapeError && /siluMul/.test(e.message),
  );
  const cos = tensor(new Array(6).fill(1), [3, 2]);
  assert.throws(
    () => rotaryHeads(x, cos, cos, 3),
    (e) => e instanceof ShapeError && /rotaryHeads/.test(e.message),
  );
  const odd = tensor(new Array(9).fill(1), [3, 3]);
  assert.throws(
    () => rotaryHeads(reshape(tensor(new Array(18).fill(1)), [2, 3, 3]), odd, odd, 1),
    (e) => e instanceof ShapeError && /even/.test(e.message),
  );
  assert.throws(
    () => rotaryHeads(x, tensor(new Array(12).fill(1), [2, 3, 2]), cos, 2),
    (e) => e instanceof ShapeError && /one shape/.test(e.message),
  );
  assert.throws(
    () =>
      rotaryHeads(
        x,
        tensor(new Array(18).fill(1), [3, 1, 3, 2]),
        tensor(new Array(18).fill(1), [3, 1, 3, 2]),
        2,
      ),
    (e) => e instanceof ShapeError && /batch row/.test(e.message),
  );
});

Deno.test({
  name:
    "fusedRmsNorm, siluMul and rotaryHeads on WebGPU equal the CPU (f32, f16) and the composition on WebGPU (f32, 1e-4)",
  ignore: noGpu,
  fn: async () => {
    const dts = gpu!.supportsDType("f16") ? ["f32", "f16"] as const : ["f32"] as const;
    await fc.assert(
      fc.asyncProperty(caseArb(300), async (c) => {
        for (const dt of dts) {
          const ours = await run(c, gpu!, dt, "fused"), ref = await run(c, cpuDevice(), dt, "fused");
          ours.forEach((o, i) =>
            assertNormClose(c, i, o, ref[i], TOL[dt], `${c.piece} ${dt} output ${i} vs CPU`)
          );
        }
        const ours = await run(c, gpu!, "f32", "fused"), composed = await run(c, gpu!, "f32", "plain");
        ours.forEach((o, i) =>
          assertNormClose(c, i, o, composed[i], 1e-4, `${c.piece} output ${i} vs composed`)
        );
      }),
      { numRuns: 15 },
    );
  },
});
