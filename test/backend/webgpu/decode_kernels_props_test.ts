/**
 * The decoding kernels (argmax, sampleToken, gemv, gemvGlu, gemvNorm, gemvQuant, addRmsNorm, gatherIds, decodeAttention in
 * src/backend/kernels/)
 * on WebGPU against their CPU twins through `Backend.run`, as fast-check properties over odd sizes, f32
 * and f16. Token choices are compared exactly; sampling is compared wherever no decision of the draw
 * lies within rounding distance of its edge (checked in f64 on the host, and such cases are counted so
 * a property cannot pass by skipping everything).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { Device } from "../../../mod.ts";
import { cpuDevice } from "../../../mod.ts";
import type { Backend, Storage } from "../../../src/backend/backend.ts";
import { ARGMAX, ARGMAX_PARTIAL, argmaxRow } from "../../../src/backend/kernels/argmax.ts";
import {
  drawUniform,
  orderKey,
  SAMPLE_TOKEN,
  sampleRow,
  type SampleTokenArgs,
} from "../../../src/backend/kernels/sample_token.ts";
import { GEMV } from "../../../src/backend/kernels/gemv.ts";
import { GEMV_GLU } from "../../../src/backend/kernels/gemv_glu.ts";
import { GEMV_NORM } from "../../../src/backend/kernels/gemv_norm.ts";
import { GEMV_QUANT } from "../../../src/backend/kernels/gemv_quant.ts";
import { dequantizeValues, quantizeValues, quantLayout } from "../../../src/backend/kernels/quantize.ts";
import { ADD_RMS_NORM } from "../../../src/backend/kernels/add_rms_norm.ts";
import { GATHER_IDS } from "../../../src/backend/kernels/gather_ids.ts";
import { DECODE_ATTENTION, type DecodeAttentionArgs } from "../../../src/backend/kernels/decode_attention.ts";
import {
  assertClose,
  type FloatType,
  floatTypes,
  onBoth,
  printWorst,
  seedArb,
  type Uploads,
  values,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";
import { roundToF16 } from "../../../src/core/half.ts";

const RUNS = 25;
/** Runs of the GEMV kernels with many template specialisations (each new one compiles on lavapipe). */
const SPECIALISED_RUNS = 12;
const f = (dev: Device) => floatTypes(dev);
const odd = (max: number) => fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max }));

// ---------------------------------------------------------------------------------------------- argmax

async function argmaxCase(dev: Device, dt: FloatType, rows: number, n: number, seed: number, ties: boolean) {
  // With ties: values from a handful of levels, so equal maxima are common.
  const x = ties ? values(rows * n, seed, dt, { lo: 0, hi: 4 }).map(Math.floor) : values(rows * n, seed, dt);
  const { gpu: g, cpu: c } = await onBoth(dev, dt, (u) => u.be.run(ARGMAX, [u.up(x)], { rows, n }));
  assert.deepEqual([...g[0]], [...c[0]], `argmax [${rows}, ${n}] ${dt}`);
  for (let r = 0; r < rows; r++) assert.equal(c[0][r], argmaxRow(x, r * n, n));
}

gpuTest("argmax on WebGPU equals its CPU twin (first index on ties)", async (dev) => {
  await fc.assert(
    fc.asyncProperty(
      f(dev),
      fc.integer({ min: 1, max: 9 }),
      odd(3000),
      seedArb,
      fc.boolean(),
      (dt, r, n, s, t) => argmaxCase(dev, dt, r, n, s, t),
    ),
    { numRuns: RUNS },
  );
});

gpuTest("argmax: one column, and a row wider than many workgroup passes", async (dev) => {
  await argmaxCase(dev, "f32", 3, 1, 1, false);
  await argmaxCase(dev, "f32", 2, 70001, 2, true);
});

/** Two-pass argmax (chunks of `chunk`, then the pairs) on both backends against argmaxRow. */
async function twoPassCase(dev: Device, dt: FloatType, rows: number, n: number, chunk: number, seed: number) {
  // Few levels (ties across chunks), some −∞, and a NaN chunk now and then.
  const x = values(rows * n, seed, dt, { lo: 0, hi: 4 }).map(Math.floor);
  for (let i = seed % 7; i < x.length; i += 11) x[i] = -Infinity;
  if (seed % 3 === 0) x.fill(NaN, 0, Math.min(n, chunk));
  const { gpu: g, cpu: c } = await onBoth(dev, dt, (u) => {
    const [part] = u.be.run(ARGMAX_PARTIAL, [u.up(x)], { rows, n, chunk });
    const [ids] = u.be.run(ARGMAX, [part], { rows, n: Math.ceil(n / chunk), pairs: true });
    u.be.free(part);
    return ids;
  });
  assert.deepEqual([...g[0]], [...c[0]], `two-pass argmax [${rows}, ${n}] chunk ${chunk} ${dt}`);
  for (let r = 0; r < rows; r++) assert.equal(c[0][r], argmaxRow(x, r * n, n), `row ${r}`);
}

gpuTest(
  "two-pass argmax (chunk winners, then the pairs) equals argmaxRow on WebGPU and the CPU",
  async (dev) => {
    await fc.assert(
      fc.asyncProperty(
        f(dev),
        fc.integer({ min: 1, max: 5 }),
        odd(3000),
        fc.integer({ min: 1, max: 700 }),
        seedArb,
        (dt, r, n, chunk, s) => twoPassCase(dev, dt, r, n, chunk, s),
      ),
      { numRuns: RUNS },
    );
  },
);

// ---------------------------------------------------------------------------------------------- sampling

/**
 * The smallest distance, relative to the row's kept mass, between any decision quantity of sampleRow
 * and its edge: the top-p masses against 1 − p and the cumulative mass against the draw's target. A
 * GPU summing in f32 may decide differently only when this is within its rounding.
 */
function sampleMargin(x: ArrayLike<number>, a: SampleTokenArgs, r: number): number {
  const n = a.n, off = r * n;
  const keys = Array.from({ length: n }, (_, j) => orderKey(x[off + j]));
  const kth = a.topK > 0 && a.topK < n ? [...keys].sort((p, q) => q - p)[a.topK - 1] : 0;
  const kept = keys.map((k) => k >= kth);
  const z = Array.from({ length: n }, (_, j) => x[off + j] / a.temperature);
  const m = Math.max(...z.filter((_, j) => kept[j]));
  const q = z.map((v, j) => (kept[j] ? Math.exp(v - m) : 0));
  const s = q.reduce((p, v) => p + v, 0);
  for (let j = 0; j < n; j++) q[j] /= s;
  let margin = Infinity;
  const keep2 = [...kept];
  if (a.topP < 1) {
    for (let j = 0; j < n; j++) {
      if (!kept[j]) continue;
      let le = 0;
      for (let i = 0; i < n; i++) if (kept[i] && q[i] <= q[j]) le += q[i];
      margin = Math.min(margin, Math.abs(le - (1 - a.topP)));
      if (!(le > 1 - a.topP || q[j] >= 1 / s)) keep2[j] = false;
    }
  }
  const total = q.reduce((p, v, j) => p + (keep2[j] ? v : 0), 0);
  const target = drawUniform(a.seed, a.counter + r) * total;
  let cum = 0;
  for (let j = 0; j < n; j++) {
    if (!keep2[j]) continue;
    cum += q[j];
    margin = Math.min(margin, Math.abs(cum - target) / total);
  }
  return margin;
}

let sampledCompared = 0;

async function sampleCase(dev: Device, dt: FloatType, a: SampleTokenArgs, scale: number, seed: number) {
  const x = values(a.rows * a.n, seed, dt).map((v) => v * scale);
  if (dt === "f16") x.forEach((v, i) => (x[i] = roundToF16(v)));
  const { gpu: g, cpu: c } = await onBoth(dev, dt, (u) => u.be.run(SAMPLE_TOKEN, [u.up(x)], a));
  for (let r = 0; r < a.rows; r++) {
    const want = sampleRow(x, a, drawUniform(a.seed, a.counter + r), r * a.n, a.n);
    assert.equal(c[0][r], want, "the CPU backend runs the twin");
    if (sampleMargin(x, a, r) < 1e-4) continue; // within rounding of an edge: either choice is right
    sampledCompared++;
    assert.equal(g[0][r], c[0][r], `sampleToken row ${r} of ${JSON.stringify({ ...a, dt })}`);
  }
}

const sampleArgs = fc.record({
  rows: fc.integer({ min: 1, max: 8 }),
  n: odd(2000),
  temperature: fc.constantFrom(1, 0.7, 1.5, 0.05),
  topK: fc.constantFrom(0, 0, 1, 2, 5, 50),
  topP: fc.constantFrom(1, 1, 0.9, 0.5, 0.1, 1e-6),
  seed: fc.integer({ min: 0, max: 0xffffffff }),
  counter: fc.integer({ min: 0, max: 1e6 }),
});

gpuTest("sampleToken on WebGPU draws the CPU twin's tokens (temperature, top-k, top-p)", async (dev) => {
  sampledCompared = 0;
  await fc.assert(
    fc.asyncProperty(
      f(dev),
      sampleArgs,
      fc.constantFrom(0.5, 2, 6),
      seedArb,
      (dt, a, scale, s) => sampleCase(dev, dt, a, scale, s),
    ),
    { numRuns: RUNS },
  );
  assert.ok(sampledCompared >= RUNS, `only ${sampledCompared} rows were far enough from an edge to compare`);
});

gpuTest("sampleToken: topK 1 is argmax; ties at the k-th value are kept", async (dev) => {
  const be = dev.backend;
  const x = [0, 3, 1, 3, 2.9];
  const seen = new Set<number>();
  for (let c = 0; c < 64; c++) {
    const a = { rows: 1, n: 5, temperature: 1, topK: 2, topP: 1, seed: 7, counter: c };
    const xs = be.upload(x, "f32");
    const [ids] = be.run(SAMPLE_TOKEN, [xs], a);
    seen.add((await be.read(ids))[0]);
    // Without a tie at the top, top-k 1 leaves one token.
    const distinct = be.upload([0, 3, 1, 2.5, 2.9], "f32");
    const [one] = be.run(SAMPLE_TOKEN, [distinct], { ...a, topK: 1 });
    assert.equal((await be.read(one))[0], 1);
    for (const s of [xs, ids, distinct, one]) be.free(s);
  }
  assert.deepEqual([...seen].sort(), [1, 3]);
});

Deno.test("sampleRow follows the warped distribution (CPU twin, counter-based draws)", () => {
  const logits = [1, 0.5, -1, 2, 0];
  const w = { temperature: 1, topK: 0, topP: 1 };
  const z = logits.map(Math.exp), total = z.reduce((a, b) => a + b);
  const counts = new Array(5).fill(0);
  const n = 20000;
  for (let i = 0; i < n; i++) counts[sampleRow(logits, w, drawUniform(3, i))]++;
  for (let i = 0; i < 5; i++) {
    const p = z[i] / total;
    assert.ok(Math.abs(counts[i] / n - p) < 4 * Math.sqrt(p * (1 - p) / n) + 1e-3, `token ${i}`);
  }
  // transformers' nucleus: 0.5 + 0.3 is the smallest set reaching 0.7.
  const logp = [0.5, 0.3, 0.15, 0.05].map(Math.log);
  const nucleus = new Set<number>();
  for (let i = 0; i < 500; i++) nucleus.add(sampleRow(logp, { ...w, topP: 0.7 }, drawUniform(1, i)));
  assert.deepEqual([...nucleus].sort(), [0, 1]);
});

// ---------------------------------------------------------------------------------------------- gemv

/** k as the GEMVs see it: odd sizes (scalar loads) and multiples of 4 (vec4 loads) alike. */
const kArb = (max: number) => fc.oneof(odd(max), odd(max / 4).map((k) => 4 * k));

gpuTest(
  "gemv on WebGPU matches the CPU for 1-8 rows, with and without the residual add and a LoRA term",
  async (dev) => {
    await fc.assert(
      fc.asyncProperty(
        f(dev),
        fc.integer({ min: 1, max: 8 }),
        odd(700),
        kArb(700),
        fc.boolean(),
        fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 40 })),
        seedArb,
        async (dt, m, n, k, residual, rank, s) => {
          const x = values(m * k, s, dt), w = values(n * k, s + 1, dt), r = values(m * n, s + 2, dt);
          const t = values(m * rank, s + 3, dt), b = values(n * rank, s + 4, dt);
          const lora = rank === 0 ? null : { r: rank, scale: 1.5 };
          const { gpu: g, cpu: c } = await onBoth(dev, dt, (u) => {
            const xs = u.up(x);
            const lo = rank === 0 ? [xs, xs] : [u.up(t), u.up(b)];
            return u.be.run(GEMV, [xs, u.up(w), residual ? u.up(r) : xs, ...lo], { m, n, k, residual, lora });
          });
          assertClose(`gemv [${m}, ${k}] x [${n}, ${k}] res ${residual} rank ${rank}`, g[0], c[0], dt);
        },
      ),
      { numRuns: RUNS },
    );
  },
);

gpuTest(
  "gemvGlu on WebGPU matches the CPU (norm fused or not, shared gate_up weight, LoRA terms)",
  async (dev) => {
    await fc.assert(
      fc.asyncProperty(
        f(dev),
        fc.integer({ min: 1, max: 8 }),
        odd(500),
        kArb(500),
        fc.boolean(),
        fc.boolean(),
        fc.oneof(fc.constant([0, 0] as [number, number]), fc.tuple(fc.nat(20), fc.nat(20))),
        seedArb,
        async (dt, m, n, k, norm, shared, [rg, ru], s) => {
          const x = values(m * k, s, dt), g = values(n * k, s + 1, dt), u = values(n * k, s + 2, dt);
          const nw = values(k, s + 3, dt);
          const t = values(Math.max(1, m * (rg + ru)), s + 4, dt);
          const bg = values(Math.max(1, n * rg), s + 5, dt), bu = values(Math.max(1, n * ru), s + 6, dt);
          const both = new Float32Array(2 * n * k);
          both.set(g);
          both.set(u, n * k);
          const lora = rg + ru === 0 ? null : { rg, ru, sg: 0.5, su: 2 };
          const args = { m, n, k, norm: norm ? { eps: 1e-5 } : null, upOffset: shared ? n * k : 0, lora };
          const { gpu: gy, cpu: cy } = await onBoth(dev, dt, (up) => {
            const xs = up.up(x), ns = norm ? up.up(nw) : xs;
            const lo = lora === null
              ? [xs, xs, xs]
              : [up.up(t), rg > 0 ? up.up(bg) : xs, ru > 0 ? up.up(bu) : xs];
            if (!shared) return up.be.run(GEMV_GLU, [xs, ns, up.up(g), up.up(u), ...lo], args);
            const w = up.up(both);
            return up.be.run(GEMV_GLU, [xs, ns, w, w, ...lo], args);
          });
          assertClose(
            `gemvGlu [${m}, ${k}] x [${n}, ${k}] ${JSON.stringify({ norm, shared, rg, ru })}`,
            gy[0],
            cy[0],
            dt,
          );
        },
      ),
      { numRuns: SPECIALISED_RUNS },
    );
  },
);

gpuTest(
  "gemvNorm on WebGPU matches the CPU (1-8 rows, 1-3 parts, biases or LoRA terms, norm or not)",
  async (dev) => {
    await fc.assert(
      fc.asyncProperty(
        f(dev),
        fc.integer({ min: 1, max: 8 }),
        fc.tuple(odd(300), fc.nat(200), fc.nat(200)),
        kArb(400),
        fc.constantFrom("none", "bias", "lora", "plain"),
        fc.integer({ min: 1, max: 24 }),
        seedArb,
        async (dt, m, [n0, n1, n2], k, epi, rank, s) => {
          const parts: [number, number, number] = [n0, n1, n1 === 0 ? 0 : n2];
          const bias = epi === "bias";
          // Part 1 without an adapter half the time: ranks of 0 between adapted parts.
          const ranks = parts.map((n, i) => (n === 0 || (i === 1 && s % 2 === 0) ? 0 : rank)) as [
            number,
            number,
            number,
          ];
          const x = values(m * k, s, dt), nw = values(k, s + 1, dt);
          const ws = parts.map((n, i) => values(Math.max(1, n) * k, s + 2 + i, dt));
          const bs = parts.map((n, i) => values(Math.max(1, n), s + 5 + i, dt));
          const lb = parts.map((n, i) => values(Math.max(1, n * ranks[i]), s + 8 + i, dt));
          const t = values(m * (ranks[0] + ranks[1] + ranks[2]), s + 11, dt);
          const lora = epi === "lora" ? { ranks, scales: [0.5, 1, 2] as [number, number, number] } : null;
          const { gpu: g, cpu: c } = await onBoth(dev, dt, (u) => {
            const w = ws.map((v, i) => (parts[i] === 0 ? null : u.up(v)));
            const w0 = w[0]!;
            const e = bias
              ? bs.map((v, i) => (parts[i] === 0 ? w0 : u.up(v)))
              : lora
              ? lb.map((v, i) => (ranks[i] === 0 ? w0 : u.up(v)))
              : [w0, w0, w0];
            const tIn = lora ? u.up(t) : w0;
            return u.be.run(GEMV_NORM, [u.up(x), u.up(nw), ...w.map((v) => v ?? w0), ...e, tIn], {
              m,
              parts,
              k,
              eps: 1e-5,
              bias,
              lora,
              norm: epi !== "plain",
            });
          });
          assertClose(`gemvNorm [${m}, ${k}] parts [${parts}] ${epi} ranks [${ranks}]`, g[0], c[0], dt);
        },
      ),
      { numRuns: SPECIALISED_RUNS },
    );
  },
);

gpuTest(
  "gemvQuant on WebGPU matches the CPU (NF4 and int8 codes, 1-8 rows, with and without the residual)",
  async (dev) => {
    await fc.assert(
      fc.asyncProperty(
        f(dev),
        fc.integer({ min: 1, max: 8 }),
        odd(300),
        fc.integer({ min: 1, max: 60 }).map((k) => 8 * k),
        fc.constantFrom("nf4" as const, "int8" as const),
        fc.boolean(),
        seedArb,
        async (dt, m, n, k, scheme, residual, s) => {
          // int8 scales per row (block k), NF4 per block of 8-64.
          const block = scheme === "int8" ? k : 8 * (1 + (s % 8));
          const layout = quantLayout(scheme, n * k, block);
          const packed = quantizeValues(values(n * k, s, "f32"), layout);
          const x = values(m * k, s + 1, dt), r = values(m * n, s + 2, dt);
          const { gpu: g, cpu: c } = await onBoth(dev, dt, (u) => {
            const xs = u.up(x);
            const p = u.be.upload(packed, "f32");
            const [y] = u.be.run(GEMV_QUANT, [xs, p, residual ? u.up(r) : xs], { m, n, k, layout, residual });
            u.be.free(p);
            return y;
          });
          assertClose(
            `gemvQuant ${scheme} [${m}, ${k}] x [${n}, ${k}] block ${block} res ${residual}`,
            g[0],
            c[0],
            dt,
          );
        },
      ),
      { numRuns: SPECIALISED_RUNS },
    );
  },
);

Deno.test("gemvQuant (CPU twin) equals gemv over the dequantized weight", async () => {
  const be = cpuDevice().backend;
  const m = 2, n = 3, k = 16;
  const layout = quantLayout("nf4", n * k, 8);
  const packed = quantizeValues(values(n * k, 4, "f32"), layout);
  const x = be.upload(values(m * k, 5, "f32"), "f32");
  const [y] = be.run(GEMV_QUANT, [x, be.upload(packed, "f32"), x], { m, n, k, layout });
  const w = be.upload(dequantizeValues(packed, layout), "f32");
  const [want] = be.run(GEMV, [x, w, x, x, x], { m, n, k });
  assert.deepEqual([...await be.read(y)], [...await be.read(want)]);
});

gpuTest(
  "GEMV kernels at 256 invocations per column (rows of 2048 and 4096 as Llama's), 8 rows, every epilogue",
  async (dev) => {
    const m = 8, n = 5, k = 2048, s = 3;
    const x = values(m * k, s, "f32"), w = values(n * k, s + 1, "f32"), r = values(m * n, s + 2, "f32");
    const nw = values(k, s + 3, "f32"), t = values(m * 3, s + 4, "f32"), b = values(n * 3, s + 5, "f32");
    const lora = { r: 3, scale: 0.5 };
    const cases: [string, (u: Uploads) => Storage][] = [
      ["gemv + res + lora", (u) => {
        const xs = u.up(x);
        return u.be.run(GEMV, [xs, u.up(w), u.up(r), u.up(t), u.up(b)], { m, n, k, residual: true, lora })[0];
      }],
      ["gemvNorm + lora", (u) => {
        const W = u.up(w), B = u.up(b);
        return u.be.run(GEMV_NORM, [u.up(x), u.up(nw), W, W, W, B, B, B, u.up(values(m * 6, s + 6, "f32"))], {
          m,
          parts: [n, 0, n],
          k,
          eps: 1e-5,
          bias: false,
          lora: { ranks: [3, 0, 3], scales: [0.5, 0, 2] },
        })[0];
      }],
      ["gemvGlu norm + lora", (u) => {
        const W = u.up(w), B = u.up(b);
        return u.be.run(GEMV_GLU, [u.up(x), u.up(nw), W, W, u.up(values(m * 6, s + 7, "f32")), B, B], {
          m,
          n,
          k,
          norm: { eps: 1e-5 },
          lora: { rg: 3, ru: 3, sg: 1, su: 2 },
        })[0];
      }],
      ["gemvQuant nf4, k 4096", (u) => {
        const kq = 4096, layout = quantLayout("nf4", n * kq, 64);
        const p = u.be.upload(quantizeValues(values(n * kq, s + 8, "f32"), layout), "f32");
        const xs = u.up(values(m * kq, s + 9, "f32"));
        const [y] = u.be.run(GEMV_QUANT, [xs, p, xs], { m, n, k: kq, layout });
        u.be.free(p);
        return y;
      }],
    ];
    for (const [name, run] of cases) {
      const { gpu: g, cpu: c } = await onBoth(dev, "f32", run);
      assertClose(name, g[0], c[0], "f32");
    }
  },
);

Deno.test("gemvNorm and gemvGlu's norm (CPU twins) equal addRmsNorm's output through gemv", async () => {
  const be = cpuDevice().backend;
  const m = 2, k = 5, n = 3;
  const x = values(m * k, 1, "f32"), nw = values(k, 2, "f32"), w = values(n * k, 3, "f32");
  const up = (v: ArrayLike<number>) => be.upload(v, "f32");
  const zero = up(new Float32Array(m * k));
  const [, normed] = be.run(ADD_RMS_NORM, [up(x), zero, up(nw)], { rows: m, n: k, eps: 1e-6 });
  const [want] = be.run(GEMV, [normed, up(w), normed, normed, normed], { m, n, k });
  const W = up(w);
  const [got] = be.run(GEMV_NORM, [up(x), up(nw), W, W, W, W, W, W, W], {
    m,
    parts: [n, 0, 0],
    k,
    eps: 1e-6,
    bias: false,
  });
  assert.deepEqual([...await be.read(got)], [...await be.read(want)]);
  const [glu] = be.run(GEMV_GLU, [up(x), up(nw), W, W, W, W, W], { m, n, k, norm: { eps: 1e-6 } });
  const [gluWant] = be.run(GEMV_GLU, [normed, normed, W, W, W, W, W], { m, n, k });
  assert.deepEqual([...await be.read(glu)], [...await be.read(gluWant)]);
});

// ---------------------------------------------------------------------------------------------- addRmsNorm

gpuTest("addRmsNorm on WebGPU matches the CPU (sum and normalised rows)", async (dev) => {
  await fc.assert(
    fc.asyncProperty(f(dev), fc.integer({ min: 1, max: 9 }), odd(3000), seedArb, async (dt, rows, n, s) => {
      const x = values(rows * n, s, dt), r = values(rows * n, s + 1, dt), w = values(n, s + 2, dt);
      const { gpu: g, cpu: c } = await onBoth(
        dev,
        dt,
        (u) => u.be.run(ADD_RMS_NORM, [u.up(x), u.up(r), u.up(w)], { rows, n, eps: 1e-5 }),
      );
      assertClose(`addRmsNorm sum [${rows}, ${n}]`, g[0], c[0], dt);
      assertClose(`addRmsNorm output [${rows}, ${n}]`, g[1], c[1], dt);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("addRmsNorm (CPU twin) equals rmsNorm of the sum", async () => {
  const { add, rmsNorm, tensor } = await import("../../../mod.ts");
  const be = cpuDevice().backend;
  const x = [1, -2, 3, 0.5, 4, -1], r = [0.5, 0.5, -1, 2, 0, 1], w = [2, 0.5, 1];
  const [s, y] = be.run(ADD_RMS_NORM, [be.upload(x, "f32"), be.upload(r, "f32"), be.upload(w, "f32")], {
    rows: 2,
    n: 3,
    eps: 1e-6,
  });
  const sum = add(tensor(x, [2, 3]), tensor(r, [2, 3]));
  const want = await rmsNorm(sum, tensor(w, [3]), 1e-6).data();
  assert.deepEqual([...await be.read(s)], [...await sum.data()]);
  (await be.read(y)).forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-6, `${i}: ${v} vs ${want[i]}`));
});

// ---------------------------------------------------------------------------------------------- gatherIds

gpuTest("gatherIds on WebGPU copies the rows its f32 ids name", async (dev) => {
  await fc.assert(
    fc.asyncProperty(
      f(dev),
      odd(300),
      odd(200),
      fc.integer({ min: 1, max: 9 }),
      seedArb,
      async (dt, rows, dim, count, s) => {
        const table = values(rows * dim, s, dt);
        const ids = Array.from({ length: count }, (_, i) => (s + 7 * i) % rows);
        const { gpu: g, cpu: c } = await onBoth(dev, dt, (u) => {
          const idStore = u.be.upload(ids, "f32");
          const [y] = u.be.run(GATHER_IDS, [u.up(table), idStore], { rows, dim, count });
          u.be.free(idStore);
          return y;
        });
        assert.deepEqual([...g[0]], [...c[0]]);
        for (let i = 0; i < count; i++) {
          assert.deepEqual([...c[0].subarray(i * dim, (i + 1) * dim)], [
            ...table.subarray(ids[i] * dim, (ids[i] + 1) * dim),
          ]);
        }
      },
    ),
    { numRuns: RUNS },
  );
});

// ---------------------------------------------------------------------------------------------- decode attention

interface AttnCase {
  batch: number;
  kvHeads: number;
  group: number;
  headDim: number;
  capacity: number;
  pos: number;
  starts: number[];
  /** q, k and v as column ranges of one projection output instead of three tensors. */
  packed: boolean;
  seed: number;
}

const attnArb = fc.record({
  batch: fc.integer({ min: 1, max: 4 }),
  kvHeads: fc.integer({ min: 1, max: 3 }),
  group: fc.constantFrom(1, 2, 3),
  headDim: fc.constantFrom(2, 6, 14, 32, 64, 80, 128),
  capacity: fc.integer({ min: 1, max: 300 }),
  packed: fc.boolean(),
  seed: seedArb,
}).chain((c) =>
  fc.integer({ min: 0, max: c.capacity - 1 }).chain((pos) =>
    fc.array(fc.integer({ min: 0, max: pos }), { minLength: c.batch, maxLength: c.batch }).map((starts) => ({
      ...c,
      pos,
      starts,
    }))
  )
);

/** Runs one step on `be`; returns out and both caches afterwards (the in-place writes). */
async function attnOn(be: Backend, dt: FloatType, c: AttnCase): Promise<Float32Array[]> {
  const heads = c.kvHeads * c.group, d = c.headDim, kvw = c.kvHeads * d;
  const width = heads * d + 2 * kvw;
  const a: DecodeAttentionArgs = {
    batch: c.batch,
    heads,
    kvHeads: c.kvHeads,
    headDim: d,
    capacity: c.capacity,
    pos: c.pos,
    scale: 1 / Math.sqrt(d),
    layout: c.packed
      ? {
        qStride: width,
        qOffset: 0,
        kStride: width,
        kOffset: heads * d,
        vStride: width,
        vOffset: heads * d + kvw,
      }
      : undefined,
  };
  // Tables of pos + 1 rows: row b reads row pos − start[b].
  const angles = values((c.pos + 1) * d, c.seed + 5, "f32", { lo: -3, hi: 3 });
  const tables = [be.upload(angles.map(Math.cos), "f32"), be.upload(angles.map(Math.sin), "f32")];
  const qkv = c.packed ? Array(3).fill(be.upload(values(c.batch * width, c.seed, dt), dt)) : [
    be.upload(values(c.batch * heads * d, c.seed, dt), dt),
    be.upload(values(c.batch * kvw, c.seed + 1, dt), dt),
    be.upload(values(c.batch * kvw, c.seed + 2, dt), dt),
  ];
  const made: Storage[] = [
    ...qkv,
    ...tables,
    be.upload(values(c.batch * c.kvHeads * c.capacity * d, c.seed + 3, dt), dt),
    be.upload(values(c.batch * c.kvHeads * c.capacity * d, c.seed + 4, dt), dt),
    be.upload(c.starts, "f32"),
  ];
  const [out, scores] = be.run(DECODE_ATTENTION, made, a);
  const res = [await be.read(out), await be.read(made[5]), await be.read(made[6])].map((x) =>
    Float32Array.from(x)
  );
  for (const s of new Set([...made, out, scores])) be.free(s);
  return res;
}

gpuTest("decodeAttention on WebGPU matches the CPU (output and the cache slot it writes)", async (dev) => {
  await fc.assert(
    fc.asyncProperty(f(dev), attnArb, async (dt, c) => {
      const before = dev.backend.memory();
      const g = await attnOn(dev.backend, dt, c), r = await attnOn(cpuDevice().backend, dt, c);
      assert.deepEqual(dev.backend.memory(), before, "GPU storages leaked");
      ["decodeAttention output", "cacheK after", "cacheV after"].forEach((n, i) =>
        assertClose(n, g[i], r[i], dt)
      );
    }),
    { numRuns: RUNS },
  );
});

Deno.test("decodeAttention (CPU twin) equals softmax attention over the visible slots with rotated q, k", async () => {
  // One row, one head, d = 2, angle 0 (cos 1, sin 0) in every table row: no rotation; slots 1..2 visible.
  const be = cpuDevice().backend;
  const made = [
    [1, 0],
    [0, 1],
    [5, 6],
    [1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0],
    [9, 9, 2, 0, 0, 0],
    [9, 9, 3, 4, 0, 0],
    [1],
  ].map((v) => be.upload(v, "f32"));
  const [out] = be.run(DECODE_ATTENTION, made, {
    batch: 1,
    heads: 1,
    kvHeads: 1,
    headDim: 2,
    capacity: 3,
    pos: 2,
    scale: 1,
  });
  // scores: slot 1: q·[2,0] = 2; slot 2 (new key [0,1]): 0. probs e^2/(e^2+1), 1/(e^2+1).
  const p1 = Math.exp(2) / (Math.exp(2) + 1), p2 = 1 - p1;
  const y = await be.read(out);
  assert.ok(Math.abs(y[0] - (p1 * 3 + p2 * 5)) < 1e-6 && Math.abs(y[1] - (p1 * 4 + p2 * 6)) < 1e-6, `${y}`);
  assert.deepEqual([...(await be.read(made[5]))], [9, 9, 2, 0, 0, 1], "new key written to slot 2");
});

Deno.test({
  name: "decode kernel property errors summary",
  ignore: gpu === null,
  fn: () => printWorst("decode kernels"),
});
