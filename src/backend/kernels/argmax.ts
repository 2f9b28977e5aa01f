/**
 * `argmax` over the last axis of [rows, n]: greedy decoding's token choice on the device
 * (wgsl/argmax.wgsl). The ids come out as f32 values, so that they can feed the next step's embedding
 * gather ({@link GATHER_IDS}) without leaving the device; f32 holds every integer below 2^24. A row
 * longer than {@link ARGMAX_CHUNK} runs in two passes, chunks first ({@link ARGMAX_PARTIAL}), so a
 * vocabulary of 128,256 is scanned by 63 workgroups instead of one.
 * @module
 */
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD } from "./record.ts";

/** Arguments of {@link ARGMAX}. */
export interface ArgmaxArgs {
  rows: number;
  n: number;
  /**
   * The input is [rows, n] (value, index) pairs of f32 from {@link ARGMAX_PARTIAL} (index −1: none), and
   * the result is the best pair's index: the second half of a two-pass argmax.
   */
  pairs?: boolean;
}

/** Arguments of {@link ARGMAX_PARTIAL}. */
export interface ArgmaxPartialArgs {
  rows: number;
  n: number;
  /** Values per chunk (one workgroup each); the row has ceil(n / chunk) chunks. */
  chunk: number;
}

/** Values a row may have before argmax runs in two passes, and each first-pass workgroup's chunk. */
export const ARGMAX_CHUNK = 2048;

/**
 * Index of the largest value of `row[off .. off + n)`, the first one on ties (torch.argmax's rule);
 * NaN never wins, and a row of NaN gives 0. The CPU twin of wgsl/argmax.wgsl.
 */
export function argmaxRow(row: ArrayLike<number>, off = 0, n = row.length - off): number {
  let best = -1;
  let v = -Infinity;
  for (let j = 0; j < n; j++) {
    const x = row[off + j];
    if (x > v || (best < 0 && x === v)) {
      v = x;
      best = j;
    }
  }
  return best < 0 ? 0 : best;
}

/**
 * The argmax kernel: input x [rows, n], output ids [rows] (f32). One workgroup per row, so a long row
 * (over {@link ARGMAX_CHUNK}) is better cut by {@link ARGMAX_PARTIAL} first, this kernel with `pairs`
 * picking from the chunks' winners.
 */
export const ARGMAX: KernelRecord<ArgmaxArgs> = {
  name: "argmax",
  template: "argmax",
  bindings: [{ name: "x", access: "read" }, { name: "ids", access: "write" }],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, NEG_INF_FIELD],
  check([x], a) {
    if (!(a.n >= 1 && a.n < 2 ** 24)) {
      throw new ShapeError(`argmax: rows of ${a.n} values; the ids are f32, so 1 <= n < 2^24`);
    }
    if (a.pairs === true) {
      if (x.dtype !== "f32") throw new DTypeError(`argmax: pairs must be f32, got ${x.dtype}`);
      expectSize(x.size, a.rows * a.n * 2, "argmax", `pairs [${a.rows}, ${a.n}, 2]`);
    } else expectSize(x.size, a.rows * a.n, "argmax", `input [${a.rows}, ${a.n}]`);
  },
  outputs: (_, a) => [{ size: a.rows, dtype: "f32", what: `argmax: ids [${a.rows}] (f32)` }],
  specialise: ([x], a) => ({ T: x.dtype, PAIRS: a.pairs === true }),
  uniforms: (a) => ({ rows: a.rows, n: a.n, neg_inf: -Infinity }),
  geometry: (a) => ({ rows: a.rows }),
  reference([x], { rows, n, pairs }) {
    const ids = new Float32Array(rows);
    for (let r = 0; r < rows; r++) {
      if (pairs !== true) {
        ids[r] = argmaxRow(x, r * n, n);
        continue;
      }
      // The pairs' values in chunk order, NaN where a chunk had no winner (NaN never wins).
      const vals = Array.from(
        { length: n },
        (_, j) => (x[2 * (r * n + j) + 1] < 0 ? NaN : x[2 * (r * n + j)]),
      );
      const best = argmaxRow(vals);
      ids[r] = x[2 * (r * n + best) + 1] < 0 ? 0 : x[2 * (r * n + best) + 1];
    }
    return [ids];
  },
};

/**
 * The first pass of a two-pass argmax (wgsl/argmax_partial.wgsl): input x [rows, n], output the pairs
 * [rows, ceil(n / chunk), 2] (f32) of each chunk's largest value and its index in the row (the first on
 * ties; −1 for a chunk of NaN only). {@link ARGMAX} with `pairs` finishes it.
 */
export const ARGMAX_PARTIAL: KernelRecord<ArgmaxPartialArgs> = {
  name: "argmax_partial",
  template: "argmax_partial",
  bindings: [{ name: "x", access: "read" }, { name: "part", access: "write" }],
  params: [
    { name: "rows", type: "u32" },
    { name: "n", type: "u32" },
    { name: "chunk", type: "u32" },
    { name: "groups", type: "u32" },
    NEG_INF_FIELD,
  ],
  check([x], a) {
    if (!(a.n >= 1 && a.n < 2 ** 24)) {
      throw new ShapeError(`argmaxPartial: rows of ${a.n} values; the ids are f32, so 1 <= n < 2^24`);
    }
    if (!(Number.isInteger(a.chunk) && a.chunk >= 1)) {
      throw new ShapeError(`argmaxPartial: chunk must be a positive integer, got ${a.chunk}`);
    }
    expectSize(x.size, a.rows * a.n, "argmaxPartial", `input [${a.rows}, ${a.n}]`);
  },
  outputs: (_, a) => {
    const g = Math.ceil(a.n / a.chunk);
    return [{ size: a.rows * g * 2, dtype: "f32", what: `argmaxPartial: pairs [${a.rows}, ${g}, 2] (f32)` }];
  },
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a) => ({
    rows: a.rows,
    n: a.n,
    chunk: a.chunk,
    groups: Math.ceil(a.n / a.chunk),
    neg_inf: -Infinity,
  }),
  geometry: (a) => ({ rows: a.rows * Math.ceil(a.n / a.chunk) }),
  reference([x], { rows, n, chunk }) {
    const g = Math.ceil(n / chunk);
    const part = new Float32Array(rows * g * 2);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < g; c++) {
        const lo = c * chunk, len = Math.min(n, lo + chunk) - lo;
        let any = false;
        for (let j = 0; j < len; j++) any ||= !Number.isNaN(x[r * n + lo + j]);
        const best = argmaxRow(x, r * n + lo, len);
        part[2 * (r * g + c)] = any ? x[r * n + lo + best] : -Infinity;
        part[2 * (r * g + c) + 1] = any ? lo + best : -1;
      }
    }
    return [part];
  },
};
