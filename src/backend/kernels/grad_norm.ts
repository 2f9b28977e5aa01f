/**
 * The fused global-norm gradient clipping of src/optim/clip.ts, as three kernels over the gradients
 * packed into one array:
 * - `sum_squares` (wgsl/sum_squares.wgsl): f32 partial sums of squares, one per chunk of
 *   {@link SUM_SQUARES_CHUNK} elements (one workgroup each);
 * - `clip_coef` (wgsl/clip_coef.wgsl): the partials summed (one workgroup), total = √sum and
 *   coef = min(1, maxNorm / (total + 1e-6)), torch.nn.utils.clip_grad_norm_'s factor;
 * - `scale_by` (wgsl/scale_by.wgsl): y = x · s[0], the factor read on the device (never on the host).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { DTypeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Elements each workgroup of `sum_squares` reduces. */
export const SUM_SQUARES_CHUNK = 4096;

/** Arguments of {@link SUM_SQUARES}. */
export interface SumSquaresArgs {
  /** Elements of the input. */
  n: number;
}

/** Partial sums of squares: input x (any float dtype), output f32 [ceil(n / chunk)]. */
export const SUM_SQUARES: KernelRecord<SumSquaresArgs> = {
  name: "sum_squares",
  template: "sum_squares",
  bindings: [{ name: "x", access: "read" }, { name: "partial", access: "write" }],
  params: [{ name: "n", type: "u32" }, { name: "chunk", type: "u32" }, { name: "groups", type: "u32" }],
  check: ([x], a) => expectSize(x.size, a.n, "sumSquares", "input"),
  outputs: (_, a) => {
    const groups = Math.ceil(a.n / SUM_SQUARES_CHUNK);
    return [{ size: groups, dtype: "f32", what: `sumSquares: ${groups} partial sums (f32)` }];
  },
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a, [y]) => ({ n: a.n, chunk: SUM_SQUARES_CHUNK, groups: y.size }),
  geometry: (_, [y]) => ({ rows: y.size }),
  reference([x], a, [y]) {
    const r = hostArray(y.dtype, y.size);
    for (let c = 0; c < y.size; c++) {
      let acc = 0;
      for (let i = c * SUM_SQUARES_CHUNK; i < Math.min(a.n, (c + 1) * SUM_SQUARES_CHUNK); i++) {
        acc += x[i] * x[i];
      }
      r[c] = acc;
    }
    return [r];
  },
};

/** Arguments of {@link CLIP_COEF}. */
export interface ClipCoefArgs {
  /** Partial sums of squares in the input. */
  n: number;
  maxNorm: number;
}

/** The norm and the clipping factor: input f32 partial sums, outputs total [1] and coef [1] (f32). */
export const CLIP_COEF: KernelRecord<ClipCoefArgs> = {
  name: "clip_coef",
  template: "clip_coef",
  bindings: [{ name: "partial", access: "read" }, { name: "total", access: "write" }, {
    name: "coef",
    access: "write",
  }],
  params: [{ name: "n", type: "u32" }, { name: "max_norm", type: "f32" }],
  check([x], a) {
    expectSize(x.size, a.n, "clipCoef", "partial sums");
    if (x.dtype !== "f32") throw new DTypeError(`clipCoef: partial sums must be f32, got ${x.dtype}`);
  },
  outputs: () => [
    { size: 1, dtype: "f32", what: "clipCoef: total norm (f32)" },
    { size: 1, dtype: "f32", what: "clipCoef: clipping factor (f32)" },
  ],
  specialise: () => ({}),
  uniforms: (a) => ({ n: a.n, max_norm: a.maxNorm }),
  geometry: () => ({ rows: 1 }),
  reference([x], a) {
    let acc = 0;
    for (let i = 0; i < a.n; i++) acc += x[i];
    const total = Math.sqrt(acc);
    // torch: clip_coef = max_norm / (total + 1e-6), clamped to 1, each step in f32.
    const coef = Math.min(1, Math.fround(a.maxNorm / Math.fround(Math.fround(total) + Math.fround(1e-6))));
    return [Float32Array.of(total), Float32Array.of(coef)];
  },
};

/** Arguments of {@link SCALE_BY}. */
export interface ScaleByArgs {
  n: number;
}

/** y = x · s[0]: input x (any float dtype) and s (f32 [1]), output y (x's dtype). */
export const SCALE_BY: KernelRecord<ScaleByArgs> = {
  name: "scale_by",
  template: "scale_by",
  bindings: [{ name: "x", access: "read" }, { name: "s", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }],
  check([x, s], a) {
    expectSize(x.size, a.n, "scaleBy", "input");
    expectSize(s.size, 1, "scaleBy", "factor");
    if (s.dtype !== "f32") throw new DTypeError(`scaleBy: the factor must be f32, got ${s.dtype}`);
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.n, dtype: x.dtype, what: `scaleBy: output of ${a.n} elements (${x.dtype})` }],
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a) => ({ n: a.n }),
  geometry: (a) => ({ elements: a.n }),
  reference([x, s], a, [y]) {
    const r = hostArray(y.dtype, a.n);
    for (let i = 0; i < a.n; i++) r[i] = x[i] * s[0];
    return [r];
  },
};
