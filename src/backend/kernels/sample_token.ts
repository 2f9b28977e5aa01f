/**
 * `sampleToken`: seeded sampling of one token per row of logits [rows, n] on the device, with
 * transformers' logits warpers in their order (temperature, top-k, top-p), so that sampled decoding
 * needs no logits on the host (wgsl/sample_token.wgsl). The random number of row r is a hash of the
 * seed and `counter + r`, not a stream: any loop that passes the same counters draws the same tokens,
 * whether it reads them back every step or every N steps.
 * @module
 */
import { dropoutHash } from "../../core/random.ts";
import { f32Bits } from "../../core/dtype.ts";
import { ConfigError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD } from "./record.ts";

/** The warpers of one draw. */
export interface SamplingWarpers {
  /** Logits are divided by it (> 0). */
  temperature: number;
  /** Keep the logits at or above the k-th largest (ties kept); 0 (or k >= n): no limit. */
  topK: number;
  /** Keep the nucleus (see {@link sampleRow}); 1: no limit. */
  topP: number;
}

/** Arguments of {@link SAMPLE_TOKEN}. */
export interface SampleTokenArgs extends SamplingWarpers {
  rows: number;
  n: number;
  /** Seed of the draws (u32). */
  seed: number;
  /** Row r draws the uniform number of counter `counter + r` (u32). */
  counter: number;
}

/** The uniform number in [0, 1) of draw `counter` under `seed`: 24 bits of the dropout hash. */
export function drawUniform(seed: number, counter: number): number {
  return (dropoutHash(seed >>> 0, counter >>> 0) >>> 8) / 16777216;
}

/** A u32 whose unsigned order is the order of the f32 value `v` (−0 below +0). */
export function orderKey(v: number): number {
  const b = f32Bits(v);
  return (b & 0x80000000) !== 0 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
}

/**
 * Draws a token from `row[off .. off + n)` with uniform `u`, in f64: the CPU twin of
 * wgsl/sample_token.wgsl. Temperature divides the logits; top-k keeps the logits whose order key
 * reaches the k-th largest one's (ties kept); top-p keeps a token when the probability mass of the
 * kept tokens at most as likely as it exceeds 1 − p (transformers' rule, with ties at the edge kept
 * together), and always the most likely; the draw walks the kept tokens in index order and takes the
 * first whose cumulative mass exceeds u times their total (the last kept one if rounding runs past).
 */
export function sampleRow(
  row: ArrayLike<number>,
  w: SamplingWarpers,
  u: number,
  off = 0,
  n = row.length - off,
): number {
  const keys = new Array<number>(n);
  for (let j = 0; j < n; j++) keys[j] = orderKey(row[off + j]);
  let kth = 0;
  if (w.topK > 0 && w.topK < n) kth = [...keys].sort((a, b) => b - a)[w.topK - 1];
  const kept = keys.map((k) => k >= kth);
  let m = -Infinity;
  for (let j = 0; j < n; j++) if (kept[j]) m = Math.max(m, row[off + j] / w.temperature);
  const q = new Float64Array(n);
  let s = 0;
  for (let j = 0; j < n; j++) if (kept[j]) s += q[j] = Math.exp(row[off + j] / w.temperature - m);
  for (let j = 0; j < n; j++) q[j] /= s;
  if (w.topP < 1) {
    const pmax = 1 / s;
    const order = [...q.keys()].filter((j) => kept[j]).sort((a, b) => q[a] - q[b]);
    // Mass at or below each probability (ties share the mass of the whole tie).
    const massLe = new Map<number, number>();
    let acc = 0;
    for (let i = 0; i < order.length; i++) {
      acc += q[order[i]];
      if (i + 1 === order.length || q[order[i + 1]] !== q[order[i]]) massLe.set(q[order[i]], acc);
    }
    for (let j = 0; j < n; j++) {
      if (kept[j] && !(massLe.get(q[j])! > 1 - w.topP || q[j] >= pmax)) kept[j] = false;
    }
  }
  let total = 0;
  for (let j = 0; j < n; j++) if (kept[j]) total += q[j];
  const target = u * total;
  let cum = 0, last = 0;
  for (let j = 0; j < n; j++) {
    if (!kept[j]) continue;
    cum += q[j];
    last = j;
    if (cum > target) return j;
  }
  return last;
}

/** Throws a ConfigError naming `op` for warpers outside their ranges. */
export function checkWarpers(w: SamplingWarpers, op: string): void {
  if (!(w.temperature > 0 && Number.isFinite(w.temperature))) {
    throw new ConfigError(`${op}: temperature must be a positive number, got ${w.temperature}`);
  }
  if (!(Number.isInteger(w.topK) && w.topK >= 0)) {
    throw new ConfigError(`${op}: topK must be a non-negative integer, got ${w.topK}`);
  }
  if (!(w.topP > 0 && w.topP <= 1)) throw new ConfigError(`${op}: topP must be in (0, 1], got ${w.topP}`);
}

/** The sampling kernel: input logits x [rows, n], output ids [rows] (f32). */
export const SAMPLE_TOKEN: KernelRecord<SampleTokenArgs> = {
  name: "sample_token",
  template: "sample_token",
  bindings: [{ name: "x", access: "read" }, { name: "ids", access: "write" }],
  params: [
    { name: "rows", type: "u32" },
    { name: "n", type: "u32" },
    { name: "top_k", type: "u32" },
    { name: "seed", type: "u32" },
    { name: "counter", type: "u32" },
    { name: "temperature", type: "f32" },
    { name: "top_p", type: "f32" },
    NEG_INF_FIELD,
  ],
  check([x], a) {
    if (!(a.n >= 1 && a.n < 2 ** 24)) {
      throw new ShapeError(`sampleToken: rows of ${a.n} values; the ids are f32, so 1 <= n < 2^24`);
    }
    expectSize(x.size, a.rows * a.n, "sampleToken", `input [${a.rows}, ${a.n}]`);
    checkWarpers(a, "sampleToken");
  },
  outputs: (_, a) => [{ size: a.rows, dtype: "f32", what: `sampleToken: ids [${a.rows}] (f32)` }],
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a) => ({
    rows: a.rows,
    n: a.n,
    top_k: a.topK,
    seed: a.seed >>> 0,
    counter: a.counter >>> 0,
    temperature: a.temperature,
    top_p: a.topP,
    neg_inf: -Infinity,
  }),
  geometry: (a) => ({ rows: a.rows }),
  reference([x], a) {
    const ids = new Float32Array(a.rows);
    for (let r = 0; r < a.rows; r++) {
      ids[r] = sampleRow(x, a, drawUniform(a.seed, a.counter + r), r * a.n, a.n);
    }
    return [ids];
  },
};
