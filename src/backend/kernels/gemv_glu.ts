/**
 * `gemvGlu`: y[m, n] = silu(x · gᵀ) · (x · uᵀ) for 1 to 8 rows of x [m, k] (wgsl/gemv_glu.wgsl): the
 * gate and up projections of a SwiGLU block with the activation and product, one dispatch where
 * decoding would otherwise run two GEMVs and two element-wise ops. Gate and up are rounded to the
 * storage type before the activation, and silu's result before the product, as the separate ops store
 * them.
 * @module
 */
import { type DType, hostArray } from "../../core/dtype.ts";
import { roundToF16 } from "../../core/half.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";
import { GEMV_MAX_ROWS } from "./gemv.ts";

/** Arguments of {@link GEMV_GLU}. */
export interface GemvGluArgs {
  m: number;
  n: number;
  k: number;
}

const round = (
  v: number,
  dtype: DType,
) => (dtype === "f16" ? roundToF16(v) : dtype === "f32" ? Math.fround(v) : v);

/** The kernel: inputs x [m, k], gate g [n, k], up u [n, k]; output y [m, n]. */
export const GEMV_GLU: KernelRecord<GemvGluArgs> = {
  name: "gemv_glu",
  template: "gemv_glu",
  bindings: [
    { name: "x", access: "read" },
    { name: "g", access: "read" },
    { name: "u", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [{ name: "n", type: "u32" }, { name: "k", type: "u32" }],
  check([x, g, u], { m, n, k }) {
    if (!(Number.isInteger(m) && m >= 1 && m <= GEMV_MAX_ROWS)) {
      throw new ShapeError(`gemvGlu: takes 1 to ${GEMV_MAX_ROWS} rows, got ${m}`);
    }
    if (!(n >= 1 && k >= 1)) throw new ShapeError(`gemvGlu: sizes must be positive, got n ${n}, k ${k}`);
    if (g.dtype !== x.dtype || u.dtype !== x.dtype) {
      throw new DTypeError(`gemvGlu: x ${x.dtype}, gate ${g.dtype}, up ${u.dtype} must agree`);
    }
    expectSize(x.size, m * k, "gemvGlu", `x [${m}, ${k}]`);
    expectSize(g.size, n * k, "gemvGlu", `gate [${n}, ${k}]`);
    expectSize(u.size, n * k, "gemvGlu", `up [${n}, ${k}]`);
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.m * a.n, dtype: x.dtype, what: `gemvGlu: output [${a.m}, ${a.n}] (${x.dtype})` }],
  specialise: ([x], a) => ({ T: x.dtype, M: a.m }),
  uniforms: (a) => ({ n: a.n, k: a.k }),
  geometry: (a) => ({ rows: Math.ceil(a.n / 8) }),
  reference([x, g, u], { m, n, k }, [spec]) {
    const dt = spec.dtype;
    const y = hostArray(dt, m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let sg = 0, su = 0;
        for (let t = 0; t < k; t++) {
          sg += x[i * k + t] * g[j * k + t];
          su += x[i * k + t] * u[j * k + t];
        }
        const gs = round(sg, dt);
        y[i * n + j] = round(gs / (1 + Math.exp(-gs)), dt) * round(su, dt);
      }
    }
    return [y];
  },
};
