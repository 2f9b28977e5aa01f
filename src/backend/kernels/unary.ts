/**
 * `unary`: out[i] = f(x[i]) for the functions of {@link UnaryOp} (wgsl/unary.wgsl).
 * @module
 */
import type { UnaryOp } from "../backend.ts";
import { hostArray } from "../../core/dtype.ts";
import type { KernelRecord } from "./record.ts";

/** The CPU definitions of the unary functions (the WGSL twins are in wgsl/unary.wgsl). */
export const UNARY_FUNCTIONS: Readonly<Record<UnaryOp, (x: number) => number>> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  silu: (x) => x / (1 + Math.exp(-x)),
  siluGrad: (x) => {
    const s = 1 / (1 + Math.exp(-x));
    return s * (1 + x * (1 - s));
  },
  relu: (x) => (x > 0 ? x : 0),
  step: (x) => (x > 0 ? 1 : 0),
  square: (x) => x * x,
  recip: (x) => 1 / x,
  abs: Math.abs,
  sin: Math.sin,
  cos: Math.cos,
};

/** Arguments of {@link UNARY}: which function. */
export interface UnaryArgs {
  op: UnaryOp;
}

/** The unary kernel: input x, output y. */
export const UNARY: KernelRecord<UnaryArgs> = {
  name: "unary",
  template: "unary",
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }],
  outputs: (
    [x],
    a,
  ) => [{ size: x.size, dtype: x.dtype, what: `${a.op}: output of ${x.size} elements (${x.dtype})` }],
  specialise: ([x], a) => ({ T: x.dtype, OP: a.op }),
  uniforms: (_, [y]) => ({ n: y.size }),
  geometry: (_, [y]) => ({ elements: y.size }),
  reference: ([x], a, [y]) => {
    const f = UNARY_FUNCTIONS[a.op];
    const r = hostArray(y.dtype, x.length);
    for (let i = 0; i < x.length; i++) r[i] = f(x[i]);
    return [r];
  },
};
