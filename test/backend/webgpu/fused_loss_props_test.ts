/**
 * The fused linear + cross-entropy loss's kernels (src/backend/kernels/cross_entropy.ts) on WebGPU against
 * the CPU reference, through `linearCrossEntropy`: loss and the gradients of hidden and weight over random
 * sizes (vocabularies wider than a workgroup), ignored targets, token chunks and vocabulary chunks (odd
 * widths too, whose f16 weight gradient is joined by concatenation), f32 and f16.
 */
import fc from "fast-check";
import { cpuDevice, type Device, linearCrossEntropy, tensor } from "../../../mod.ts";
import { assertClose, type FloatType, floatTypes, printWorst, values } from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";
import { Rng } from "../../../src/core/random.ts";

interface Case {
  n: number;
  hidden: number;
  vocab: number;
  targets: number[];
  chunkElements: number;
  vocabChunk?: number;
  seed: number;
}

async function run(device: Device, dtype: FloatType, c: Case): Promise<Float32Array[]> {
  const opts = { device, dtype, requiresGrad: true };
  const h = tensor(values(c.n * c.hidden, c.seed, dtype), [c.n, c.hidden], opts);
  const w = tensor(values(c.vocab * c.hidden, c.seed + 1, dtype), [c.vocab, c.hidden], opts);
  const loss = linearCrossEntropy(h, w, c.targets, {
    chunkElements: c.chunkElements,
    vocabChunk: c.vocabChunk,
  });
  loss.backward();
  const out = [];
  for (const t of [loss, h.grad!, w.grad!]) out.push(Float32Array.from(await t.data()));
  for (const t of [h, w, loss]) t.dispose();
  return out;
}

async function compare(dev: Device, dtype: FloatType, c: Case) {
  const ours = await run(dev, dtype, c), ref = await run(cpuDevice(), dtype, c);
  ["fused loss", "fused loss d hidden", "fused loss d weight"].forEach((n, i) =>
    assertClose(n, ours[i], ref[i], dtype)
  );
}

const caseArb = (dev: Device): fc.Arbitrary<[FloatType, Case]> =>
  fc.tuple(
    floatTypes(dev),
    fc.record({
      n: fc.integer({ min: 1, max: 40 }),
      hidden: fc.constantFrom(1, 3, 8, 17, 64),
      vocab: fc.oneof(fc.integer({ min: 1, max: 60 }), fc.constantFrom(255, 257, 513)),
      chunkRows: fc.integer({ min: 1, max: 50 }),
      vocabChunk: fc.option(fc.integer({ min: 1, max: 300 }), { nil: undefined }),
      seed: fc.integer({ min: 0, max: 1e9 }),
    }).map(({ chunkRows, ...c }) => {
      const rng = new Rng(c.seed + 3);
      const targets = Array.from({ length: c.n }, (): number =>
        rng.uniform() < 0.3 ? -100 : Math.floor(rng.uniform() * c.vocab));
      if (
        !targets.some((t) =>
          t !== -100
        )
      ) targets[0] = c.vocab - 1;
      return { ...c, targets, chunkElements: chunkRows * Math.min(c.vocab, c.vocabChunk ?? c.vocab) };
    }),
  );

gpuTest(
  "linearCrossEntropy on WebGPU equals the CPU reference (loss, d hidden, d weight; f32, f16)",
  async (dev) => {
    await fc.assert(fc.asyncProperty(caseArb(dev), ([dt, c]) => compare(dev, dt, c)), { numRuns: 12 });
  },
);

gpuTest(
  "linearCrossEntropy on WebGPU: a chunk of ignored rows between two chunks of targets",
  async (dev) => {
    const targets = [3, 1, -100, -100, -100, -100, 0, 299];
    await compare(dev, "f32", { n: 8, hidden: 5, vocab: 300, targets, chunkElements: 600, seed: 4 });
  },
);

gpuTest(
  "linearCrossEntropy on WebGPU: targets in the first and last of several vocabulary chunks",
  async (dev) => {
    const targets = [0, 299, 150, -100, 64, 63, 1, 298];
    await compare(dev, "f32", {
      n: 8,
      hidden: 7,
      vocab: 300,
      targets,
      chunkElements: 192,
      vocabChunk: 64,
      seed: 9,
    });
  },
);

Deno.test({
  name: "fused loss property errors summary",
  ignore: gpu === null,
  fn: () => printWorst("fused loss"),
});
