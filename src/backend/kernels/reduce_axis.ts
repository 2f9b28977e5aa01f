/**
 * Sum or max over the middle axis of an [outer, n, inner] view → [outer, inner]: two kernels sharing one
 * CPU reference, `reduce_rows` (inner = 1: one workgroup per row, a tree in workgroup memory) and
 * `reduce_cols` (one invocation per output element walking its column).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD, type OutputSpec } from "./record.ts";
import type { HostArray } from "../../core/dtype.ts";

/** Arguments of the reductions. */
export interface ReduceArgs {
  op: "sum" | "max";
  outer: number;
  n: number;
  inner: number;
}

const opName = (a: ReduceArgs) => (a.op === "sum" ? "sumAxis" : "maxAxis");

function reduceReference([x]: readonly HostArray[], a: ReduceArgs, [y]: readonly OutputSpec[]): HostArray[] {
  const { outer, n, inner } = a;
  const r = hostArray(y.dtype, outer * inner);
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < inner; j++) {
      let s = a.op === "sum" ? 0 : -Infinity;
      for (let i = 0; i < n; i++) {
        const v = x[(o * n + i) * inner + j];
        s = a.op === "sum" ? s + v : Math.max(s, v);
      }
      r[o * inner + j] = s;
    }
  }
  return [r];
}

const common = {
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "write" }],
  check: ([x], a) =>
    expectSize(x.size, a.outer * a.n * a.inner, opName(a), `input [${a.outer}, ${a.n}, ${a.inner}]`),
  outputs: ([x], a) => [{
    size: a.outer * a.inner,
    dtype: x.dtype,
    what: `${opName(a)}: output [${a.outer}, ${a.inner}] (${x.dtype})`,
  }],
  specialise: ([x], a) => ({ T: x.dtype, OP: a.op }),
  reference: reduceReference,
} as const satisfies Partial<KernelRecord<ReduceArgs>>;

/** Reduction along rows of [rows, n] (inner = 1). */
export const REDUCE_ROWS: KernelRecord<ReduceArgs> = {
  name: "reduce_rows",
  template: "reduce_rows",
  ...common,
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, NEG_INF_FIELD],
  uniforms: (a) => ({ rows: a.outer, n: a.n, neg_inf: -Infinity }),
  geometry: (a) => ({ rows: a.outer }),
};

/** Reduction along the middle axis of [outer, n, inner]. */
export const REDUCE_COLS: KernelRecord<ReduceArgs> = {
  name: "reduce_cols",
  template: "reduce_cols",
  ...common,
  params: [
    { name: "outer", type: "u32" },
    { name: "n", type: "u32" },
    { name: "inner", type: "u32" },
    NEG_INF_FIELD,
  ],
  uniforms: (a) => ({ outer: a.outer, n: a.n, inner: a.inner, neg_inf: -Infinity }),
  geometry: (_, [y]) => ({ elements: y.size }),
};
