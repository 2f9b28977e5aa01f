/**
 * `gemvNorm`: an RMSNorm fused into the one to three GEMVs that read its output, for 1 to 8 rows
 * (wgsl/gemv_norm.wgsl). With xn = T(nw · T(x · (mean(x²) + eps)^-½)) per row of x [m, k] (what
 * `addRmsNorm` stores), y [m, n0 + n1 + n2] = [xn w0ᵀ | xn w1ᵀ | xn w2ᵀ], plus each part's bias when
 * `bias` is set. A decoding step runs a layer's input norm and its q, k and v projections as one dispatch
 * this way (one part for a fused qkv weight; one part for the final norm and the LM head).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";
import { checkGemvShape, gemvLayout, gemvSpec, roundTo } from "./gemv.ts";

/** Arguments of {@link GEMV_NORM}. */
export interface GemvNormArgs {
  /** Rows of x, 1 to 8. */
  m: number;
  /** Output features of each part: [n0, n1, n2], n0 ≥ 1; a part of 0 columns is absent. */
  parts: readonly [number, number, number];
  /** Input features (the norm's width). */
  k: number;
  /** The norm's epsilon. */
  eps: number;
  /** Whether the inputs b0, b1, b2 are the parts' biases; otherwise they are bound but not read. */
  bias: boolean;
}

/**
 * The kernel: inputs x [m, k], nw [k] (the norm's scale), w0 [n0, k], w1 [n1, k], w2 [n2, k], b0 [n0],
 * b1 [n1], b2 [n2]; output y [m, n0 + n1 + n2]. An absent part's weight, and unread biases, may be any
 * storage of x's dtype (the callers bind w0 again).
 */
export const GEMV_NORM: KernelRecord<GemvNormArgs> = {
  name: "gemv_norm",
  template: "gemv_norm",
  bindings: [
    { name: "x", access: "read" },
    { name: "nw", access: "read" },
    { name: "w0", access: "read" },
    { name: "w1", access: "read" },
    { name: "w2", access: "read" },
    { name: "b0", access: "read" },
    { name: "b1", access: "read" },
    { name: "b2", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [
    { name: "n0", type: "u32" },
    { name: "n1", type: "u32" },
    { name: "n2", type: "u32" },
    { name: "k", type: "u32" },
    { name: "eps", type: "f32" },
  ],
  check(inputs, { m, parts, k, eps, bias }) {
    const op = "gemvNorm";
    if (inputs.length !== 8) throw new ShapeError(`${op}: takes 8 inputs, got ${inputs.length}`);
    if (!(parts.length === 3 && parts.every((n) => Number.isInteger(n) && n >= 0) && parts[0] >= 1)) {
      throw new ShapeError(`${op}: parts must be three column counts, the first positive, got [${parts}]`);
    }
    checkGemvShape(op, m, parts[0] + parts[1] + parts[2], k);
    if (!(eps >= 0)) throw new ShapeError(`${op}: eps must be non-negative, got ${eps}`);
    const [x, nw] = inputs;
    for (const t of inputs) {
      if (t.dtype !== x.dtype) throw new DTypeError(`${op}: every input must be ${x.dtype}, got ${t.dtype}`);
    }
    expectSize(x.size, m * k, op, `x [${m}, ${k}]`);
    expectSize(nw.size, k, op, `norm weight [${k}]`);
    parts.forEach((n, i) => {
      if (n === 0) return;
      expectSize(inputs[2 + i].size, n * k, op, `w${i} [${n}, ${k}]`);
      if (bias) expectSize(inputs[5 + i].size, n, op, `b${i} [${n}]`);
    });
  },
  outputs: ([x], a) => {
    const n = a.parts[0] + a.parts[1] + a.parts[2];
    return [{ size: a.m * n, dtype: x.dtype, what: `gemvNorm: output [${a.m}, ${n}] (${x.dtype})` }];
  },
  specialise: ([x], a) => ({
    T: x.dtype,
    M: a.m,
    VEC: a.k % 4 === 0,
    BIAS: a.bias,
    ...gemvSpec(a.parts[0] + a.parts[1] + a.parts[2], a.k),
  }),
  uniforms: (a) => ({ n0: a.parts[0], n1: a.parts[1], n2: a.parts[2], k: a.k, eps: a.eps }),
  geometry: (a) => ({ rows: gemvLayout(a.parts[0] + a.parts[1] + a.parts[2], a.k).groups }),
  reference(inputs, { m, parts, k, eps, bias }, [spec]) {
    const [x, nw] = inputs, dt = spec.dtype;
    const n = parts[0] + parts[1] + parts[2];
    const y = hostArray(dt, m * n);
    const xn = new Float64Array(k);
    for (let i = 0; i < m; i++) {
      let ss = 0;
      for (let t = 0; t < k; t++) ss += x[i * k + t] * x[i * k + t];
      const inv = 1 / Math.sqrt(ss / k + eps);
      for (let t = 0; t < k; t++) xn[t] = roundTo(nw[t] * roundTo(x[i * k + t] * inv, dt), dt);
      let col = 0;
      parts.forEach((np, q) => {
        const w = inputs[2 + q], b = inputs[5 + q];
        for (let j = 0; j < np; j++, col++) {
          let s = 0;
          for (let t = 0; t < k; t++) s += xn[t] * w[j * k + t];
          y[i * n + col] = bias ? roundTo(s, dt) + b[j] : s;
        }
      });
    }
    return [y];
  },
};
