/**
 * The mixed-batch LoRA kernels (LORA_ROWS and the backward's LORA_ROWS_BACK and LORA_ROWS_GRAD,
 * src/backend/kernels/lora_rows.ts) on WebGPU against their CPU twins through `Backend.run`: fast-check properties over random row-to-adapter maps (rows without an
 * adapter included), ranks around the kernel's rank bounds (powers of two), odd sizes, packed layouts with
 * gaps, and the activation and adapter dtypes drawn independently from f32 and f16.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { Device } from "../../../mod.ts";
import { ShapeError } from "../../../mod.ts";
import {
  LORA_ROWS,
  LORA_ROWS_BACK,
  LORA_ROWS_GRAD,
  type LoraRowsArgs,
  type LoraRowsGradSlot,
  loraRowsRankStride,
  type LoraRowsSlot,
  NO_SLOT,
} from "../../../src/backend/kernels/lora_rows.ts";
import {
  assertClose,
  dim,
  type FloatType,
  floatTypes,
  onBoth,
  printWorst,
  seedArb,
  Uploads,
  values,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";
import { Rng } from "../../../src/core/random.ts";

const RUNS = 30;

/** One case: sizes, each slot's rank, each row's slot (-1: none), the dtypes and a seed. */
interface Case {
  m: number;
  k: number;
  n: number;
  ranks: number[];
  rows: number[];
  t: FloatType;
  ta: FloatType;
  seed: number;
}

/** Runs `c` on both backends and compares. Slots are packed in reverse order with gaps, as any layout must work. */
async function check(dev: Device, c: Case): Promise<void> {
  const rng = new Rng(c.seed);
  const slots: LoraRowsSlot[] = [];
  let aEnd = 0, bEnd = 0;
  for (let s = c.ranks.length - 1; s >= 0; s--) {
    aEnd += 2 * Math.floor(rng.uniform() * 3); // even gaps: f16 packing keeps whole words
    bEnd += 2 * Math.floor(rng.uniform() * 3);
    slots[s] = { rank: c.ranks[s], aOffset: aEnd, bOffset: bEnd, scale: 0.25 + 2 * rng.uniform() };
    aEnd += c.ranks[s] * c.k + ((c.ranks[s] * c.k) % 2);
    bEnd += c.ranks[s] * c.n + ((c.ranks[s] * c.n) % 2);
  }
  const x = values(c.m * c.k, c.seed + 1, c.t);
  const y0 = values(c.m * c.n, c.seed + 2, c.t);
  const a = values(Math.max(1, aEnd), c.seed + 3, c.ta);
  const b = values(Math.max(1, bEnd), c.seed + 4, c.ta);
  const args: LoraRowsArgs = {
    m: c.m,
    k: c.k,
    n: c.n,
    rowSlots: Uint32Array.from(c.rows, (s) => (s < 0 ? NO_SLOT : s)),
    slots,
  };
  const { gpu, cpu } = await onBoth(dev, c.t, (u) => {
    const w = new Uploads(u.be, c.ta);
    const out = u.be.run(LORA_ROWS, [u.up(x), u.up(y0), w.up(a), w.up(b)], args);
    w.freeAll(); // queued work keeps its buffers until it is submitted
    return out;
  });
  assertClose(
    `loraRows ${c.t} over ${c.ta} adapters`,
    gpu[0],
    cpu[0],
    c.t === "f16" || c.ta === "f16" ? "f16" : "f32",
  );
  // Rows without an adapter are the base output, bit for bit, on both backends.
  c.rows.forEach((s, r) => {
    if (s < 0) {
      for (let o = 0; o < c.n; o++) assert.equal(gpu[0][r * c.n + o], y0[r * c.n + o]);
    }
  });
}

const caseArb = (dev: Device): fc.Arbitrary<Case> =>
  fc.record({
    m: fc.integer({ min: 1, max: 24 }),
    k: dim(160),
    n: dim(160),
    ranks: fc.array(fc.oneof(fc.integer({ min: 1, max: 17 }), fc.constantFrom(8, 9, 16, 33)), {
      minLength: 1,
      maxLength: 5,
    }),
    t: floatTypes(dev),
    ta: floatTypes(dev),
    seed: seedArb,
    pick: fc.array(fc.integer({ min: -1, max: 4 }), { minLength: 24, maxLength: 24 }),
  }).map(({ pick, ...c }) => ({
    ...c,
    rows: pick.slice(0, c.m).map((s) => (s < 0 ? -1 : s % c.ranks.length)),
  }));

gpuTest(
  "loraRows on WebGPU equals its CPU twin over random row-to-adapter maps, ranks, sizes and dtypes",
  async (dev) => {
    await fc.assert(fc.asyncProperty(caseArb(dev), (c) => check(dev, c)), { numRuns: RUNS });
  },
);

gpuTest(
  "loraRows: ranks at and past a rank bound, past one round, every row without an adapter, k = n = 1",
  async (dev) => {
    await check(dev, { m: 3, k: 65, n: 7, ranks: [8, 9], rows: [1, 0, 1], t: "f32", ta: "f32", seed: 1 });
    await check(dev, { m: 2, k: 5, n: 3, ranks: [4], rows: [-1, -1], t: "f32", ta: "f32", seed: 2 });
    await check(dev, {
      m: 4,
      k: 1,
      n: 1,
      ranks: [1, 3, 2],
      rows: [2, -1, 0, 1],
      t: "f32",
      ta: "f32",
      seed: 3,
    });
    // a rank past one 256-wide round (bound 512, one lane per rank, two rounds)
    await check(dev, { m: 3, k: 3, n: 4, ranks: [300, 2], rows: [0, 1, 0], t: "f32", ta: "f32", seed: 5 });
    // rows of one adapter far apart, the others' in between (no grouping of adjacent rows assumed)
    await check(dev, {
      m: 6,
      k: 31,
      n: 257,
      ranks: [16, 2],
      rows: [0, 1, 1, -1, 1, 0],
      t: "f32",
      ta: "f32",
      seed: 4,
    });
  },
);

gpuTest(
  "loraRows: a row naming a missing slot or a slot past the packed A is a ShapeError before any work",
  (dev) => {
    const be = dev.backend;
    const x = be.upload([1, 2], "f32"), y0 = be.upload([0, 0], "f32"), a = be.upload([1, 1], "f32");
    const before = be.memory();
    try {
      const base = { m: 1, k: 2, n: 2, slots: [{ rank: 1, aOffset: 0, bOffset: 0, scale: 1 }] };
      assert.throws(
        () => be.run(LORA_ROWS, [x, y0, a, a], { ...base, rowSlots: Uint32Array.of(1) }),
        ShapeError,
      );
      assert.throws(
        () =>
          be.run(LORA_ROWS, [x, y0, a, a], {
            ...base,
            rowSlots: Uint32Array.of(0),
            slots: [{ rank: 2, aOffset: 0, bOffset: 0, scale: 1 }],
          }),
        /slot 0's A \[2, 2\] at 0 runs past the packed A of 2 elements/,
      );
      assert.deepEqual(be.memory(), before);
    } finally {
      for (const s of [x, y0, a]) be.free(s);
    }
  },
);

/** The backward of `c`: the per-row pass, then the weight gradients from its t and u, on both backends. */
async function checkBackward(dev: Device, c: Case): Promise<void> {
  const rng = new Rng(c.seed);
  const slots: LoraRowsGradSlot[] = [];
  let aEnd = 0, bEnd = 0;
  const rowSlots = Uint32Array.from(c.rows, (s) => (s < 0 ? NO_SLOT : s));
  // the rows of each slot, in a shuffled order (the kernel must not assume sorted rows)
  const bySlot = c.ranks.map((_, s) => c.rows.flatMap((r, i) => (r === s ? [i] : [])));
  for (const list of bySlot) list.sort(() => rng.uniform() - 0.5);
  const order = Uint32Array.from(bySlot.flat());
  let start = 0;
  for (let s = c.ranks.length - 1; s >= 0; s--) {
    aEnd += 2 * Math.floor(rng.uniform() * 3);
    bEnd += 2 * Math.floor(rng.uniform() * 3);
    slots[s] = {
      rank: c.ranks[s],
      aOffset: aEnd,
      bOffset: bEnd,
      scale: 0.25 + 2 * rng.uniform(),
      rowStart: 0,
      rowCount: 0,
    };
    aEnd += c.ranks[s] * c.k + ((c.ranks[s] * c.k) % 2);
    bEnd += c.ranks[s] * c.n + ((c.ranks[s] * c.n) % 2);
  }
  bySlot.forEach((list, s) => {
    slots[s].rowStart = start;
    slots[s].rowCount = list.length;
    start += list.length;
  });
  const aSize = Math.max(2, aEnd), bSize = Math.max(2, bEnd);
  const x = values(c.m * c.k, c.seed + 1, c.t);
  const dy = values(c.m * c.n, c.seed + 2, c.t);
  const a = values(aSize, c.seed + 3, c.ta);
  const b = values(bSize, c.seed + 4, c.ta);
  const { gpu, cpu } = await onBoth(dev, c.t, (up) => {
    const w = new Uploads(up.be, c.ta);
    const xs = up.up(x), dys = up.up(dy);
    const [t, u, dx] = up.be.run(LORA_ROWS_BACK, [xs, dys, w.up(a), w.up(b)], {
      m: c.m,
      k: c.k,
      n: c.n,
      rowSlots,
      slots,
      needDx: true,
    });
    const [da, db] = up.be.run(LORA_ROWS_GRAD, [xs, dys, t, u], {
      m: c.m,
      k: c.k,
      n: c.n,
      aSize,
      bSize,
      order,
      slots,
      dtype: c.ta,
    });
    w.freeAll();
    return [t, u, dx, da, db];
  });
  const wide = c.t === "f16" || c.ta === "f16" ? "f16" : "f32";
  ["A x", "B^T dy", "dx", "dA", "dB"].forEach((what, i) =>
    assertClose(`loraRowsBackward ${what} ${c.t} over ${c.ta}`, gpu[i], cpu[i], wide)
  );
  // Rows without an adapter get no LoRA input gradient, and adapters without rows no weight gradient.
  const rs = loraRowsRankStride(slots);
  c.rows.forEach((s, r) => {
    if (s >= 0) return;
    for (let i = 0; i < c.k; i++) assert.equal(gpu[2][r * c.k + i], 0);
    for (let j = 0; j < rs; j++) assert.equal(gpu[0][r * rs + j] + gpu[1][r * rs + j], 0);
  });
  slots.forEach((s) => {
    if (s.rowCount > 0) return;
    for (let e = 0; e < s.rank * c.k; e++) assert.equal(gpu[3][s.aOffset + e], 0);
    for (let e = 0; e < s.rank * c.n; e++) assert.equal(gpu[4][s.bOffset + e], 0);
  });
}

gpuTest(
  "loraRows backward (per-row pass and weight gradients) on WebGPU equals its CPU twin over random cases",
  async (dev) => {
    await fc.assert(fc.asyncProperty(caseArb(dev), (c) => checkBackward(dev, c)), { numRuns: RUNS });
  },
);

gpuTest(
  "loraRows backward: a rank past one round, rank 1, every row without an adapter, an adapter without rows",
  async (dev) => {
    await checkBackward(dev, {
      m: 3,
      k: 3,
      n: 4,
      ranks: [300, 2],
      rows: [0, 1, 0],
      t: "f32",
      ta: "f32",
      seed: 5,
    });
    await checkBackward(dev, {
      m: 4,
      k: 1,
      n: 1,
      ranks: [1, 3, 2],
      rows: [2, -1, 0, 2],
      t: "f32",
      ta: "f32",
      seed: 3,
    });
    await checkBackward(dev, { m: 2, k: 5, n: 3, ranks: [4], rows: [-1, -1], t: "f32", ta: "f32", seed: 2 });
    await checkBackward(dev, {
      m: 6,
      k: 65,
      n: 257,
      ranks: [16, 9],
      rows: [0, 1, 1, -1, 1, 0],
      t: "f32",
      ta: "f32",
      seed: 4,
    });
  },
);

gpuTest("loraRows backward: an ordered row past the batch is a ShapeError before any work", (dev) => {
  const be = dev.backend;
  const x = be.upload([1, 2], "f32"), t = be.upload([0], "f32");
  const before = be.memory();
  try {
    const slot = { rank: 1, aOffset: 0, bOffset: 0, scale: 1, rowStart: 0, rowCount: 1 };
    assert.throws(
      () =>
        be.run(LORA_ROWS_GRAD, [x, x, t, t], {
          m: 1,
          k: 2,
          n: 2,
          aSize: 2,
          bSize: 2,
          order: Uint32Array.of(1),
          slots: [slot],
          dtype: "f32",
        }),
      /ordered row 0 is 1 but the batch has 1 rows/,
    );
    assert.deepEqual(be.memory(), before);
  } finally {
    be.free(x);
    be.free(t);
  }
});

Deno.test({
  name: "loraRows property errors summary",
  ignore: gpu === null,
  fn: () => printWorst("loraRows"),
});
