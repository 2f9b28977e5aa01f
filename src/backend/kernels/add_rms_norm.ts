/**
 * `addRmsNorm`: a residual add and the RMSNorm after it in one dispatch, per row of [rows, n]
 * (wgsl/add_rms_norm.wgsl): s = x + res and y = w · round(s · (mean(s²) + eps)^-½). Decoding runs every
 * norm of a layer this way, the residual adds folded in.
 * @module
 */
import { type DType, hostArray } from "../../core/dtype.ts";
import { roundToF16 } from "../../core/half.ts";
import { DTypeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of {@link ADD_RMS_NORM}. */
export interface AddRmsNormArgs {
  rows: number;
  n: number;
  eps: number;
}

const round = (
  v: number,
  dtype: DType,
) => (dtype === "f16" ? roundToF16(v) : dtype === "f32" ? Math.fround(v) : v);

/** The kernel: inputs x and res [rows, n], w [n]; outputs s = x + res and y, both [rows, n]. */
export const ADD_RMS_NORM: KernelRecord<AddRmsNormArgs> = {
  name: "add_rms_norm",
  template: "add_rms_norm",
  bindings: [
    { name: "x", access: "read" },
    { name: "res", access: "read" },
    { name: "w", access: "read" },
    { name: "s_out", access: "write" },
    { name: "y", access: "write" },
  ],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, { name: "eps", type: "f32" }],
  check([x, res, w], a) {
    if (res.dtype !== x.dtype || w.dtype !== x.dtype) {
      throw new DTypeError(`addRmsNorm: x ${x.dtype}, res ${res.dtype}, w ${w.dtype} must agree`);
    }
    expectSize(x.size, a.rows * a.n, "addRmsNorm", `x [${a.rows}, ${a.n}]`);
    expectSize(res.size, a.rows * a.n, "addRmsNorm", `res [${a.rows}, ${a.n}]`);
    expectSize(w.size, a.n, "addRmsNorm", `weight [${a.n}]`);
  },
  outputs: ([x], a) =>
    ["sum", "output"].map((what) => ({
      size: a.rows * a.n,
      dtype: x.dtype,
      what: `addRmsNorm: ${what} [${a.rows}, ${a.n}] (${x.dtype})`,
    })),
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a) => ({ rows: a.rows, n: a.n, eps: a.eps }),
  geometry: (a) => ({ rows: a.n === 0 ? 0 : a.rows }),
  reference([x, res, w], { rows, n, eps }, [spec]) {
    const dt = spec.dtype;
    const s = hostArray(dt, rows * n), y = hostArray(dt, rows * n);
    for (let i = 0; i < rows; i++) {
      let ss = 0;
      for (let j = 0; j < n; j++) {
        const v = round(x[i * n + j] + res[i * n + j], dt);
        s[i * n + j] = v;
        ss += v * v;
      }
      const r = 1 / Math.sqrt(ss / n + eps);
      for (let j = 0; j < n; j++) y[i * n + j] = w[j] * round(s[i * n + j] * r, dt);
    }
    return [s, y];
  },
};
