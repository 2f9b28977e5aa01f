/**
 * `linearCrossEntropy` on the CPU against the composed loss it replaces, crossEntropy(linear(h, W)):
 * value and the gradients of hidden and weight, over random sizes, ignored targets (whole chunks of them
 * included), chunk sizes from one token to all of them and vocabulary chunks from one class to all.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  crossEntropy,
  Device,
  DeviceError,
  linear,
  linearCrossEntropy,
  randn,
  tensor,
  tidy,
} from "../../mod.ts";
import { createCpuBackend } from "../../src/backend/cpu/cpu_backend.ts";
import { DEFAULT_CHUNK_ELEMENTS, lossTile } from "../../src/tensor/fused_loss.ts";
import { ConfigError, ShapeError } from "../../src/core/errors.ts";
import { Rng } from "../../src/core/random.ts";

interface Case {
  n: number;
  hidden: number;
  vocab: number;
  targets: number[];
  chunkElements: number;
  vocabChunk?: number;
  weightGrad: boolean;
  seed: number;
}

function run(c: Case, dtype: "f32" | "f64", fused: boolean): Float64Array[] {
  const rng = new Rng(c.seed);
  const make = (shape: number[], requiresGrad: boolean) =>
    tensor(Array.from({ length: shape[0] * shape[1] }, () => rng.normal()), shape, { dtype, requiresGrad });
  const h = make([c.n, c.hidden], true), w = make([c.vocab, c.hidden], c.weightGrad);
  const loss = fused
    ? linearCrossEntropy(h, w, c.targets, { chunkElements: c.chunkElements, vocabChunk: c.vocabChunk })
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
  vocabChunk: fc.option(fc.integer({ min: 1, max: 41 }), { nil: undefined }),
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
  // With vocabChunk the budget counts tiles of chunkRows rows over that many classes.
  return { ...c, targets, chunkElements: chunkRows * Math.min(c.vocab, c.vocabChunk ?? c.vocab) };
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

Deno.test("linearCrossEntropy: vocabulary chunks hold at most vocabChunk classes, tiles at most chunkElements", () => {
  // 10 tokens over 7 classes in chunks of 3 classes with room for 12 logits: tiles of 4 rows x 3 classes.
  const h = tensor(Array.from({ length: 50 }, (_, i) => Math.sin(i)), [10, 5], { requiresGrad: true });
  const w = tensor(Array.from({ length: 35 }, (_, i) => Math.cos(i)), [7, 5], { requiresGrad: true });
  const targets = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2];
  const be = h.device.backend;
  const matmul = be.matmul.bind(be);
  const shapes = new Set<string>();
  be.matmul = (a, b, args) => {
    if (args.transB) shapes.add(`${args.m}x${args.n}`);
    return matmul(a, b, args);
  };
  try {
    linearCrossEntropy(h, w, targets, { chunkElements: 12, vocabChunk: 3 }).backward();
  } finally {
    be.matmul = matmul;
  }
  assert.deepEqual([...shapes].sort(), ["2x1", "2x3", "4x1", "4x3"]);
});

Deno.test("linearCrossEntropy's tiles for the Llama-3.2-1B and SmolLM2 losses are GEMM-friendly", () => {
  // 2048 tokens over 128,256 classes: 1024 rows x 8192 classes, 32 MiB of f32 logits per tile.
  assert.deepEqual(lossTile(2048, 128256, DEFAULT_CHUNK_ELEMENTS), [1024, 8192]);
  assert.deepEqual(lossTile(4096, 49152, DEFAULT_CHUNK_ELEMENTS), [1024, 8192]);
  // A small batch takes whole rows of classes as long as they fit.
  assert.deepEqual(lossTile(64, 49152, DEFAULT_CHUNK_ELEMENTS), [64, 49152]);
  // A small budget still keeps 4096 classes together and gives up rows first.
  assert.deepEqual(lossTile(2048, 128256, 1 << 20), [256, 4096]);
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
  assert.throws(
    () => linearCrossEntropy(h, w, [0, 1], { vocabChunk: 1.5 }),
    (e) => e instanceof ConfigError && /vocabChunk must be a positive whole number, got 1.5/.test(e.message),
  );
});

Deno.test("linearCrossEntropy: a forward or backward refused midway by the memory limit frees all it made", async () => {
  const device = new Device(createCpuBackend(), "cpu", "CPU reference (fused loss failure test)");
  const [N, H, V] = [12, 8, 40];
  const hidden = randn([N, H], { device, seed: 1, requiresGrad: true });
  const weight = randn([V, H], { device, seed: 2, requiresGrad: true });
  const targets = Array.from({ length: N }, (_, i) => (i * 7) % V);
  // Tiles of 4 rows x 16 classes: 3 token chunks x 3 vocabulary chunks in each pass.
  const step = () =>
    tidy(() => {
      const loss = linearCrossEntropy(hidden, weight, targets, { chunkElements: 64, vocabChunk: 16 });
      loss.backward();
      return loss;
    });
  const clear = () => {
    for (const t of [hidden, weight]) {
      (t.grad as { dispose(): void } | null)?.dispose();
      t.grad = null;
    }
  };
  const expected = step();
  const grads = [Array.from(await hidden.grad!.data()), Array.from(await weight.grad!.data())];
  expected.dispose();
  clear();
  const live = device.memory().bytes;
  device.resetPeakMemory();
  step().dispose();
  const peak = device.memory().peakBytes;
  clear();
  let failures = 0;
  for (let limit = live; limit < peak; limit += 16) {
    device.setMemoryLimit(limit);
    try {
      step().dispose();
    } catch (e) {
      assert.ok(e instanceof DeviceError, `${e}`);
      failures++;
    }
    device.setMemoryLimit(null);
    clear();
    assert.equal(device.memory().bytes, live, `limit ${limit - live} bytes above live: all freed`);
  }
  assert.ok(failures > 5, `only ${failures} failing limits`);
  step().dispose();
  assert.deepEqual([Array.from(await hidden.grad!.data()), Array.from(await weight.grad!.data())], grads);
});
