/**
 * `linearCrossEntropy` on the CPU against the composed loss it replaces, crossEntropy(linear(h, W)):
 * value and the gradients of hidden and weight, over random sizes, ignored targets (whole chunks of them
 * included) and chunk sizes from one token to all of them.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { crossEntropy, linear, linearCrossEntropy, tensor } from "../../mod.ts";
import { ConfigError, ShapeError } from "../../src/core/errors.ts";
import { Rng } from "../../src/core/random.ts";

interface Case {
  n: number;
  hidden: number;
  vocab: number;
  targets: number[];
  chunkElements: number;
  weightGrad: boolean;
  seed: number;
}

function run(c: Case, dtype: "f32" | "f64", fused: boolean): Float64Array[] {
  const rng = new Rng(c.seed);
  const make = (shape: number[], requiresGrad: boolean) =>
    tensor(Array.from({ length: shape[0] * shape[1] }, () => rng.normal()), shape, { dtype, requiresGrad });
  const h = make([c.n, c.hidden], true), w = make([c.vocab, c.hidden], c.weightGrad);
  const loss = fused
    ? linearCrossEntropy(h, w, c.targets, { chunkElements: c.chunkElements })
    : crossEntropy(linear(h, w), c.targets);
  loss.backward();
  const out = [Float64Array.from(loss.dataSync()), Float64Array.from(h.grad!.dataSync())];
  if (c.weightGrad) out.push(Float64Array.from(w.grad!.dataSync()));
  return out;
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  n: fc.integer({ min: 1, max: 17 }),
  hidden: fc.integer({ min: 1, max: 9 }),
  vocab: fc.integer({ min: 1, max: 40 }),
  chunkRows: fc.integer({ min: 1, max: 20 }),
  ignored: fc.double({ min: 0, max: 1, noNaN: true }),
  weightGrad: fc.boolean(),
  seed: fc.integer({ min: 0, max: 1e9 }),
}).map(({ chunkRows, ignored, ...c }) => {
  const rng = new Rng(c.seed + 5);
  const targets = Array.from(
    { length: c.n },
    (): number => rng.uniform() < ignored ? -100 : Math.floor(rng.uniform() * c.vocab),
  );
  if (!targets.some((t) => t !== -100)) targets[Math.floor(rng.uniform() * c.n)] = 0;
  return { ...c, targets, chunkElements: chunkRows * c.vocab };
});

function assertNear(name: string, ours: Float64Array, ref: Float64Array, tol: number) {
  assert.equal(ours.length, ref.length);
  for (let i = 0; i < ref.length; i++) {
    assert.ok(
      Math.abs(ours[i] - ref[i]) <= tol * Math.max(1, Math.abs(ref[i])),
      `${name}[${i}]: ${ours[i]} vs ${ref[i]}`,
    );
  }
}

Deno.test("linearCrossEntropy equals crossEntropy(linear(h, W)) with its gradients: f64 1e-12, f32 1e-5", () => {
  fc.assert(
    fc.property(caseArb, (c) => {
      for (const [dt, tol] of [["f64", 1e-12], ["f32", 1e-5]] as const) {
        const ours = run(c, dt, true), ref = run(c, dt, false);
        ["loss", "d hidden", "d weight"].slice(0, ours.length).forEach((n, i) =>
          assertNear(`${n} ${dt}`, ours[i], ref[i], tol)
        );
      }
    }),
    { numRuns: 80 },
  );
});

Deno.test("linearCrossEntropy: every target ignored is NaN, as torch's mean over nothing", () => {
  const h = tensor([1, 2, 3, 4], [2, 2], { requiresGrad: true });
  const w = tensor([1, 0, 0, 1, 1, 1], [3, 2]);
  assert.ok(Number.isNaN(linearCrossEntropy(h, w, [-100, -100]).dataSync()[0]));
});

Deno.test("linearCrossEntropy: chunks never hold more than chunkElements logits", () => {
  // 10 tokens over 7 classes with room for 21 logits: chunks of 3 rows; the largest storage the loss
  // makes besides its inputs is one chunk's logits (21 values), not [10, 7].
  const h = tensor(Array.from({ length: 50 }, (_, i) => Math.sin(i)), [10, 5], { requiresGrad: true });
  const w = tensor(Array.from({ length: 35 }, (_, i) => Math.cos(i)), [7, 5]);
  const targets = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2];
  const be = h.device.backend;
  const matmul = be.matmul.bind(be);
  let largest = 0;
  be.matmul = (a, b, args) => {
    // The logits products are the only ones against Wᵀ.
    if (args.transB) largest = Math.max(largest, args.m * args.n);
    return matmul(a, b, args);
  };
  try {
    const loss = linearCrossEntropy(h, w, targets, { chunkElements: 21 });
    loss.backward();
  } finally {
    be.matmul = matmul;
  }
  assert.equal(largest, 21);
});

Deno.test("linearCrossEntropy: bad shapes, targets and options name the op", () => {
  const h = tensor(new Float32Array(6), [2, 3]), w = tensor(new Float32Array(12), [4, 3]);
  assert.throws(
    () => linearCrossEntropy(h, tensor(new Float32Array(8), [4, 2]), [0, 1]),
    (e) => e instanceof ShapeError && /linearCrossEntropy: hidden \[2,3\] and weight \[4,2\]/.test(e.message),
  );
  assert.throws(
    () => linearCrossEntropy(h, w, [0]),
    (e) => e instanceof ShapeError && /1 targets/.test(e.message),
  );
  assert.throws(
    () => linearCrossEntropy(h, w, [0, 4]),
    (e) => e instanceof ShapeError && /target 4 at row 1 is out of range for 4 classes/.test(e.message),
  );
  assert.throws(() => linearCrossEntropy(h, w, [0, 1], { chunkElements: 0 }), ConfigError);
});
