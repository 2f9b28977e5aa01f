/**
 * `softmax` / log-softmax over the last axis of [rows, n], one workgroup per row (wgsl/softmax.wgsl).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD } from "./record.ts";

/** Arguments of {@link SOFTMAX}. */
export interface SoftmaxArgs {
  rows: number;
  n: number;
  log: boolean;
}

const opName = (a: SoftmaxArgs) => (a.log ? "logSoftmax" : "softmax");

/** The softmax kernel: input x, output y. */
export const SOFTMAX: KernelRecord<SoftmaxArgs> = {
  name: "softmax",
  template: "softmax",
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, NEG_INF_FIELD],
  check: ([x], a) => expectSize(x.size, a.rows * a.n, opName(a), `input [${a.rows}, ${a.n}]`),
  outputs: ([x], a) => [{
    size: a.rows * a.n,
    dtype: x.dtype,
    what: `${opName(a)}: output [${a.rows}, ${a.n}] (${x.dtype})`,
  }],
  specialise: ([x], a) => ({ T: x.dtype, LOG: a.log }),
  uniforms: (a) => ({ rows: a.rows, n: a.n, neg_inf: -Infinity }),
  geometry: (a) => ({ rows: a.n === 0 ? 0 : a.rows }),
  reference([a], { rows, n, log }, [y]) {
    const r = hostArray(y.dtype, rows * n);
    for (let i = 0; i < rows; i++) {
      let mx = -Infinity;
      for (let j = 0; j < n; j++) mx = Math.max(mx, a[i * n + j]);
      let s = 0;
      for (let j = 0; j < n; j++) s += Math.exp(a[i * n + j] - mx);
      const ls = Math.log(s);
      for (let j = 0; j < n; j++) {
        const z = a[i * n + j] - mx;
        r[i * n + j] = log ? z - ls : Math.exp(z) / s;
      }
    }
    return [r];
  },
};
