/**
 * `argmax` over the last axis of [rows, n]: greedy decoding's token choice on the device
 * (wgsl/argmax.wgsl). The ids come out as f32 values, so that they can feed the next step's embedding
 * gather ({@link GATHER_IDS}) without leaving the device; f32 holds every integer below 2^24.
 * @module
 */
import { ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD } from "./record.ts";

/** Arguments of {@link ARGMAX}. */
export interface ArgmaxArgs {
  rows: number;
  n: number;
}

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

/** The argmax kernel: input x [rows, n], output ids [rows] (f32). */
export const ARGMAX: KernelRecord<ArgmaxArgs> = {
  name: "argmax",
  template: "argmax",
  bindings: [{ name: "x", access: "read" }, { name: "ids", access: "write" }],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, NEG_INF_FIELD],
  check([x], a) {
    if (!(a.n >= 1 && a.n < 2 ** 24)) {
      throw new ShapeError(`argmax: rows of ${a.n} values; the ids are f32, so 1 <= n < 2^24`);
    }
    expectSize(x.size, a.rows * a.n, "argmax", `input [${a.rows}, ${a.n}]`);
  },
  outputs: (_, a) => [{ size: a.rows, dtype: "f32", what: `argmax: ids [${a.rows}] (f32)` }],
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a) => ({ rows: a.rows, n: a.n, neg_inf: -Infinity }),
  geometry: (a) => ({ rows: a.rows }),
  reference([x], { rows, n }) {
    const ids = new Float32Array(rows);
    for (let r = 0; r < rows; r++) ids[r] = argmaxRow(x, r * n, n);
    return [ids];
  },
};
