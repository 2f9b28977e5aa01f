/**
 * The decoding step's routed LoRA kernel (LORA_ROWS_PARTS, src/backend/kernels/lora_rows.ts) on WebGPU
 * against its CPU twin through `Backend.run`: fast-check properties over random row-to-adapter maps per
 * part (rows without an adapter included), one to three parts of odd widths (absent parts too), ranks
 * around the rank bounds, the fused RMSNorm and the SwiGLU output on and off, packed layouts with gaps,
 * and the activation and adapter dtypes drawn independently from f32 and f16.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { Device } from "../../../mod.ts";
import { ShapeError } from "../../../mod.ts";
import {
  LORA_ROWS_PARTS,
  type LoraRowsPartsArgs,
  loraRowsPartsTable,
  type LoraRowsSlot,
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

const RUNS = 15;

/** One case: rows, input width, each part's columns, per part the adapters' ranks and each row's pick (-1: none). */
interface Case {
  m: number;
  k: number;
  parts: [number, number, number];
  ranks: number[][];
  rows: number[][];
  norm: boolean;
  glu: boolean;
  t: FloatType;
  ta: FloatType;
  seed: number;
  /** Gaps between the packed adapters (default true); without them and with k % 4 = 0, vec4 loads. */
  gaps?: boolean;
  /** One workgroup per (row, 256 outputs) (default) or per row. */
  spread?: boolean;
}

/** Each part's slots, packed in reverse order with even gaps, and the packed sizes. */
function layout(c: Case, rng: Rng) {
  return c.ranks.map((ranks, q) => {
    const slots: LoraRowsSlot[] = [];
    let aEnd = 0, bEnd = 0;
    for (let s = ranks.length - 1; s >= 0; s--) {
      if (c.gaps !== false) {
        aEnd += 2 * Math.floor(rng.uniform() * 3);
        bEnd += 2 * Math.floor(rng.uniform() * 3);
      }
      slots[s] = { rank: ranks[s], aOffset: aEnd, bOffset: bEnd, scale: 0.25 + 2 * rng.uniform() };
      aEnd += ranks[s] * c.k + ((ranks[s] * c.k) % 2);
      bEnd += ranks[s] * c.parts[q] + ((ranks[s] * c.parts[q]) % 2);
    }
    return { slots, a: Math.max(2, aEnd), b: Math.max(2, bEnd) };
  });
}

async function check(dev: Device, c: Case): Promise<void> {
  const rng = new Rng(c.seed);
  const packs = layout(c, rng);
  const routed = c.rows.map((picks, q) => picks.map((s) => (s < 0 ? null : packs[q].slots[s])));
  const { table, maxRank, aligned } = loraRowsPartsTable(c.m, c.k, c.parts, routed, packs);
  if (c.gaps === false && c.k % 4 === 0) assert.ok(aligned, "a packing without gaps is vec4-aligned");
  const total = c.parts[0] + c.parts[1] + c.parts[2];
  const x = values(c.m * c.k, c.seed + 1, c.t);
  const nw = values(c.k, c.seed + 2, c.t);
  const y0 = values(c.m * total, c.seed + 3, c.t);
  const as = packs.map((p, q) => values(p.a, c.seed + 4 + q, c.ta));
  const bs = packs.map((p, q) => values(p.b, c.seed + 7 + q, c.ta));
  const args: LoraRowsPartsArgs = {
    m: c.m,
    k: c.k,
    parts: c.parts,
    maxRank,
    norm: c.norm ? { eps: 1e-5 } : null,
    glu: c.glu,
    aligned,
    spread: c.spread,
  };
  const { gpu, cpu } = await onBoth(dev, c.t, (u) => {
    const w = new Uploads(u.be, c.ta), f = new Uploads(u.be, "f32");
    const out = u.be.run(LORA_ROWS_PARTS, [
      u.up(x),
      u.up(nw),
      u.up(y0),
      ...as.map((a) => w.up(a)),
      ...bs.map((b) => w.up(b)),
      f.up(table),
    ], args);
    w.freeAll();
    f.freeAll();
    return out;
  });
  const tol = c.t === "f16" || c.ta === "f16" ? "f16" : "f32";
  assertClose(`loraRowsParts ${c.t} over ${c.ta} adapters`, gpu[0], cpu[0], tol);
  // Without the SwiGLU product, a row's columns of a part where it has no adapter are y0, bit for bit.
  if (!c.glu) {
    let col = 0;
    c.parts.forEach((n, q) => {
      for (let r = 0; r < c.m; r++) {
        if (c.rows[q][r] >= 0) continue;
        for (let o = 0; o < n; o++) assert.equal(gpu[0][r * total + col + o], y0[r * total + col + o]);
      }
      col += n;
    });
  }
}

const caseArb = (dev: Device): fc.Arbitrary<Case> =>
  fc.record({
    m: fc.integer({ min: 1, max: 8 }),
    k: dim(130),
    parts: fc.tuple(dim(70), fc.oneof(fc.constant(0), dim(40)), fc.oneof(fc.constant(0), dim(40))),
    ranks: fc.array(
      fc.array(fc.oneof(fc.integer({ min: 1, max: 17 }), fc.constantFrom(8, 16, 33)), {
        minLength: 1,
        maxLength: 4,
      }),
      { minLength: 3, maxLength: 3 },
    ),
    norm: fc.boolean(),
    glu: fc.boolean(),
    spread: fc.boolean(),
    t: floatTypes(dev),
    ta: floatTypes(dev),
    seed: seedArb,
    pick: fc.array(fc.integer({ min: -1, max: 3 }), { minLength: 24, maxLength: 24 }),
  }).map(({ pick, parts, ...c }) => {
    // SwiGLU needs an even column count: the last present part gets one more column when it is odd.
    const p: [number, number, number] = [...parts];
    if (c.glu && (p[0] + p[1] + p[2]) % 2 === 1) p[0] += 1;
    return {
      ...c,
      parts: p,
      rows: [0, 1, 2].map((q) =>
        pick.slice(q * 8, q * 8 + c.m).map((s) => (s < 0 || p[q] === 0 ? -1 : s % c.ranks[q].length))
      ),
    };
  });

gpuTest(
  "loraRowsParts on WebGPU equals its CPU twin over random parts, row-to-adapter maps, norm, SwiGLU and dtypes",
  async (dev) => {
    await fc.assert(fc.asyncProperty(caseArb(dev), (c) => check(dev, c)), { numRuns: RUNS });
  },
);

gpuTest("loraRowsParts: q|k|v with a base row, one part over SwiGLU, a rank past one round", async (dev) => {
  const base = { t: "f32" as const, ta: "f32" as const };
  await check(dev, {
    m: 3,
    k: 33,
    parts: [16, 8, 8],
    ranks: [[16, 4], [16], [2, 3]],
    rows: [[0, -1, 1], [0, -1, 0], [1, -1, 0]],
    norm: true,
    glu: false,
    seed: 1,
    ...base,
  });
  // a fused gate_up weight: one part of 2n columns, one adapter over both halves
  await check(dev, {
    m: 2,
    k: 9,
    parts: [10, 0, 0],
    ranks: [[3], [], []],
    rows: [[0, 0], [-1, -1], [-1, -1]],
    norm: false,
    glu: true,
    seed: 2,
    ...base,
  });
  await check(dev, {
    m: 2,
    k: 3,
    parts: [4, 4, 0],
    ranks: [[300], [1], []],
    rows: [[0, -1], [0, 0], [-1, -1]],
    norm: true,
    glu: true,
    seed: 3,
    ...base,
  });
});

gpuTest(
  "loraRowsParts: outputs over several workgroups (parts across their edges) or one a row, vec4 and scalar loads",
  async (dev) => {
    for (const spread of [true, false]) {
      const base = { t: "f32" as const, ta: "f32" as const, spread };
      for (const gaps of [false, true]) {
        // q|k|v-like: 3 chunks of 256 outputs, k's and v's columns inside the last two
        await check(dev, {
          m: 4,
          k: 64,
          parts: [300, 120, 120],
          ranks: [[16, 8], [16], [4, 16]],
          rows: [[0, 1, -1, 0], [0, 0, -1, 0], [1, 0, -1, 0]],
          norm: true,
          glu: false,
          seed: 4,
          gaps,
          ...base,
        });
        // gate|up over 3 chunks of outputs (600 columns each)
        await check(dev, {
          m: 3,
          k: 36,
          parts: [600, 600, 0],
          ranks: [[16, 3], [16, 5], []],
          rows: [[0, 1, -1], [0, 1, 1], [-1, -1, -1]],
          norm: true,
          glu: true,
          seed: 5,
          gaps,
          ...base,
        });
      }
      // one part of 520 outputs (down_proj-like), k odd: scalar loads, no norm
      await check(dev, {
        m: 2,
        k: 45,
        parts: [520, 0, 0],
        ranks: [[16, 2], [], []],
        rows: [[1, 0], [-1, -1], [-1, -1]],
        norm: false,
        glu: false,
        seed: 6,
        ...base,
      });
    }
  },
);

gpuTest(
  "loraRowsParts: a table entry past its packed A, or a table of another size, is a ShapeError",
  (dev) => {
    const slot = { rank: 2, aOffset: 0, bOffset: 0, scale: 1 };
    assert.throws(
      () => loraRowsPartsTable(1, 4, [3, 0, 0], [[slot], null, null], [{ a: 7, b: 6 }, null, null]),
      /part 0\)?: slot 0's A \[2, 4\] at 0 runs past the packed A of 7 elements/,
    );
    assert.throws(
      () => loraRowsPartsTable(2, 4, [3, 0, 0], [[slot], null, null], [{ a: 8, b: 6 }, null, null]),
      /part 0 routes 1 rows, the batch has 2/,
    );
    const be = dev.backend;
    const x = be.upload([1, 2, 3, 4], "f32"),
      y0 = be.upload([0, 0, 0], "f32"),
      tab = be.upload([0, 0, 0], "f32");
    const before = be.memory();
    try {
      assert.throws(
        () =>
          be.run(LORA_ROWS_PARTS, [x, x, y0, x, x, x, x, x, x, tab], {
            m: 1,
            k: 4,
            parts: [3, 0, 0],
            maxRank: 2,
            norm: null,
            glu: false,
            aligned: true,
          }),
        (e) => e instanceof ShapeError && /table \[3, 1, 4\]/.test(e.message),
      );
      assert.deepEqual(be.memory(), before);
    } finally {
      for (const s of [x, y0, tab]) be.free(s);
    }
  },
);

Deno.test({
  name: "loraRowsParts property errors summary",
  ignore: gpu === null,
  fn: () => printWorst("loraRowsParts"),
});
