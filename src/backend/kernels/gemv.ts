/**
 * `gemv`: y[m, n] = x[m, k] · w[n, k]ᵀ for 1 to 8 rows (wgsl/gemv.wgsl): a linear layer during
 * decoding, where each step multiplies one token per row by every weight, so the product runs at the
 * pace of reading the weight once. The rows are a template constant (one pipeline per row count).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of {@link GEMV}. */
export interface GemvArgs {
  /** Rows of x, 1 to {@link GEMV_MAX_ROWS}. */
  m: number;
  /** Output features (rows of w). */
  n: number;
  /** Input features. */
  k: number;
}

/** The most rows one GEMV takes; more rows are a GEMM's job. */
export const GEMV_MAX_ROWS = 8;

/** Output columns per workgroup (32 lanes each) at the backend's workgroup size of 256. */
const COLS_PER_GROUP = 8;

/** The GEMV kernel: inputs x [m, k] and w [n, k], output y [m, n]. */
export const GEMV: KernelRecord<GemvArgs> = {
  name: "gemv",
  template: "gemv",
  bindings: [{ name: "x", access: "read" }, { name: "w", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }, { name: "k", type: "u32" }],
  check([x, w], { m, n, k }) {
    if (!(Number.isInteger(m) && m >= 1 && m <= GEMV_MAX_ROWS)) {
      throw new ShapeError(`gemv: takes 1 to ${GEMV_MAX_ROWS} rows, got ${m}`);
    }
    if (!(n >= 1 && k >= 1)) throw new ShapeError(`gemv: sizes must be positive, got n ${n}, k ${k}`);
    if (x.dtype !== w.dtype) throw new DTypeError(`gemv: x is ${x.dtype}, w is ${w.dtype}`);
    expectSize(x.size, m * k, "gemv", `x [${m}, ${k}]`);
    expectSize(w.size, n * k, "gemv", `w [${n}, ${k}]`);
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.m * a.n, dtype: x.dtype, what: `gemv: output [${a.m}, ${a.n}] (${x.dtype})` }],
  specialise: ([x], a) => ({ T: x.dtype, M: a.m }),
  uniforms: (a) => ({ n: a.n, k: a.k }),
  geometry: (a) => ({ rows: Math.ceil(a.n / COLS_PER_GROUP) }),
  reference([x, w], { m, n, k }, [y]) {
    const r = hostArray(y.dtype, m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let t = 0; t < k; t++) s += x[i * k + t] * w[j * k + t];
        r[i * n + j] = s;
      }
    }
    return [r];
  },
};
