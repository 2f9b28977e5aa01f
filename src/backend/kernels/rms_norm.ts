/**
 * RMSNorm over the last axis of [rows, n] as one forward and one or two backward dispatches
 * (wgsl/rms_norm*.wgsl): y = T(w · T(x · r)) with r = (mean(x²) + eps)^-½ computed in f32 (transformers'
 * LlamaRMSNorm: normalise in float32, cast back, then scale; for f32 storage the casts are no-ops). The
 * forward keeps nothing: the backward recomputes r from x, writes it per row, and the weight gradient
 * (when the weight is trained) reads it.
 * @module
 */
import { type DType, hostArray } from "../../core/dtype.ts";
import { roundToF16 } from "../../core/half.ts";
import { DTypeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of the RMSNorm kernels: `rows` rows of `n` values, and the epsilon under the root. */
export interface RmsNormArgs {
  rows: number;
  n: number;
  eps: number;
}

/** The dtype of the per-row factor r: f32, or f64 for f64 tensors on the CPU. */
export function rmsStatsDType(dtype: DType): DType {
  return dtype === "f64" ? "f64" : "f32";
}

/** `v` rounded to the storage type (the casts the GPU makes between f32 steps). */
const round = (v: number, dtype: DType) =>
  dtype === "f16" ? roundToF16(v) : dtype === "f32" ? Math.fround(v) : v;

/** The factor (Σ x² / n + eps)^-½ of row `i`, summed in f64. */
function rowFactor(x: ArrayLike<number>, i: number, n: number, eps: number): number {
  let ss = 0;
  for (let j = 0; j < n; j++) ss += x[i * n + j] * x[i * n + j];
  return 1 / Math.sqrt(ss / n + eps);
}

function checkSizes(op: string, sizes: [string, number, number][]): void {
  for (const [what, size, expected] of sizes) expectSize(size, expected, op, what);
}

function sameDType(op: string, named: [string, { dtype: DType }][]): void {
  const dt = named[0][1].dtype;
  if (named.some(([, s]) => s.dtype !== dt)) {
    throw new DTypeError(`${op}: ${named.map(([n, s]) => `${n} ${s.dtype}`).join(", ")} must agree`);
  }
}

const PARAMS = [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, {
  name: "eps",
  type: "f32",
}] as const;

/** The forward: inputs x [rows, n] and w [n]; output y [rows, n]. One workgroup per row. */
export const RMS_NORM: KernelRecord<RmsNormArgs> = {
  name: "rms_norm",
  template: "rms_norm",
  bindings: [{ name: "x", access: "read" }, { name: "w", access: "read" }, { name: "y", access: "write" }],
  params: PARAMS,
  check([x, w], a) {
    sameDType("rmsNorm", [["x", x], ["weight", w]]);
    checkSizes("rmsNorm", [[`x [${a.rows}, ${a.n}]`, x.size, a.rows * a.n], [
      `weight [${a.n}]`,
      w.size,
      a.n,
    ]]);
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.rows * a.n, dtype: x.dtype, what: `rmsNorm: output [${a.rows}, ${a.n}] (${x.dtype})` }],
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a) => ({ rows: a.rows, n: a.n, eps: a.eps }),
  geometry: (a) => ({ rows: a.n === 0 ? 0 : a.rows }),
  reference([x, w], { rows, n, eps }, [spec]) {
    const dt = spec.dtype, y = hostArray(dt, rows * n);
    for (let i = 0; i < rows; i++) {
      const r = rowFactor(x, i, n, eps);
      for (let j = 0; j < n; j++) y[i * n + j] = w[j] * round(x[i * n + j] * r, dt);
    }
    return [y];
  },
};

/**
 * The input gradient: inputs x [rows, n], w [n] and the output gradient g [rows, n]; outputs
 * dx [rows, n] and the per-row factor r [rows] ({@link rmsStatsDType}) for {@link RMS_NORM_WEIGHT_GRAD}.
 */
export const RMS_NORM_BACKWARD: KernelRecord<RmsNormArgs> = {
  name: "rms_norm_backward",
  template: "rms_norm_backward",
  bindings: [
    { name: "x", access: "read" },
    { name: "w", access: "read" },
    { name: "g", access: "read" },
    { name: "dx", access: "write" },
    { name: "r_out", access: "write" },
  ],
  params: PARAMS,
  check([x, w, g], a) {
    sameDType("rmsNorm backward", [["x", x], ["weight", w], ["gradient", g]]);
    checkSizes("rmsNorm backward", [
      [`x [${a.rows}, ${a.n}]`, x.size, a.rows * a.n],
      [`weight [${a.n}]`, w.size, a.n],
      [`gradient [${a.rows}, ${a.n}]`, g.size, a.rows * a.n],
    ]);
  },
  outputs: ([x], a) => [
    { size: a.rows * a.n, dtype: x.dtype, what: `rmsNorm backward: dx [${a.rows}, ${a.n}] (${x.dtype})` },
    { size: a.rows, dtype: rmsStatsDType(x.dtype), what: `rmsNorm backward: 1/rms [${a.rows}]` },
  ],
  specialise: ([x]) => ({ T: x.dtype, L: rmsStatsDType(x.dtype) }),
  uniforms: (a) => ({ rows: a.rows, n: a.n, eps: a.eps }),
  geometry: (a) => ({ rows: a.n === 0 ? 0 : a.rows }),
  reference([x, w, g], { rows, n, eps }, [spec]) {
    const dt = spec.dtype, dx = hostArray(dt, rows * n), rs = hostArray(rmsStatsDType(dt), rows);
    for (let i = 0; i < rows; i++) {
      const r = rowFactor(x, i, n, eps);
      let sgx = 0;
      for (let j = 0; j < n; j++) sgx += round(g[i * n + j] * w[j], dt) * x[i * n + j];
      const c = sgx * r * r * r / n;
      for (let j = 0; j < n; j++) dx[i * n + j] = round(g[i * n + j] * w[j], dt) * r - x[i * n + j] * c;
      rs[i] = r;
    }
    return [dx, rs];
  },
};

/**
 * The weight gradient: inputs x [rows, n], g [rows, n] and r [rows] (as {@link RMS_NORM_BACKWARD} wrote
 * it); output dw [n] = Σ_rows g · T(x · r). One invocation per column.
 */
export const RMS_NORM_WEIGHT_GRAD: KernelRecord<RmsNormArgs> = {
  name: "rms_norm_weight_grad",
  template: "rms_norm_weight_grad",
  bindings: [
    { name: "x", access: "read" },
    { name: "g", access: "read" },
    { name: "r", access: "read" },
    { name: "dw", access: "write" },
  ],
  params: PARAMS.slice(0, 2),
  check([x, g, r], a) {
    sameDType("rmsNorm weight gradient", [["x", x], ["gradient", g]]);
    if (r.dtype !== rmsStatsDType(x.dtype)) {
      throw new DTypeError(
        `rmsNorm weight gradient: 1/rms is ${r.dtype}, expected ${rmsStatsDType(x.dtype)}`,
      );
    }
    checkSizes("rmsNorm weight gradient", [
      [`x [${a.rows}, ${a.n}]`, x.size, a.rows * a.n],
      [`gradient [${a.rows}, ${a.n}]`, g.size, a.rows * a.n],
      [`1/rms [${a.rows}]`, r.size, a.rows],
    ]);
  },
  outputs: ([x], a) => [{ size: a.n, dtype: x.dtype, what: `rmsNorm weight gradient [${a.n}] (${x.dtype})` }],
  specialise: ([x]) => ({ T: x.dtype, L: rmsStatsDType(x.dtype) }),
  uniforms: (a) => ({ rows: a.rows, n: a.n }),
  geometry: (a) => ({ elements: a.n }),
  reference([x, g, r], { rows, n }, [spec]) {
    const dt = spec.dtype, dw = hostArray(dt, n);
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let i = 0; i < rows; i++) acc += g[i * n + j] * round(x[i * n + j] * r[i], dt);
      dw[j] = acc;
    }
    return [dw];
  },
};
