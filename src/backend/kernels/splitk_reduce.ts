/**
 * `splitk_reduce`: out[i] = alpha · sum over s of part[s · n + i], the second dispatch of a split-K GEMM
 * (webgpu/gemm.ts) adding the slices' f32 partial products; and `splitk_reduce_bias`, the same with the
 * GEMM's bias added (wgsl/gemm/splitk_reduce_bias.wgsl). Both sum through wgsl/gemm/splitk_sum.wgsl.
 * @module
 */
import type { DType } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord, type SpecValue } from "./record.ts";

/** Invocations of a reduce workgroup. */
const REDUCE_WG = 256;

/** Slices from which a reduce stages its loads in workgroup memory (G = 8) rather than adding directly. */
const STAGED_FROM_SLICES = 16;

/**
 * How a reduce of `splits` slices spreads over a workgroup (wgsl/gemm/splitk_sum.wgsl): one lane per
 * output adding its slices straight from storage (G = 1) below {@link STAGED_FROM_SLICES} slices, else 8
 * lanes per output each fetching CH slices per round (a round covers up to 64), so a workgroup owns 256 / G
 * outputs. On the H200 the staged sum took 6.5 against 9.5 µs for 16 slices of 16 K outputs and 8 against
 * 15 µs for 64 slices of 8 K, but 8 against 7 µs for 8 slices of 64 K and 20 against 12 µs for 2 slices of
 * 2 M (bench/NOTES.md, sixth session).
 */
export function splitReduceLayout(splits: number): { G: number; CH: number; outputs: number } {
  const G = splits >= STAGED_FROM_SLICES ? 8 : 1;
  const CH = Math.min(8, Math.max(1, Math.ceil(splits / G)));
  return { G, CH, outputs: REDUCE_WG / G };
}

function reduceSpecialisation(dtype: DType, splits: number): Record<string, SpecValue> {
  const { G, CH } = splitReduceLayout(splits);
  return { T: dtype, WG: REDUCE_WG, G, CH };
}

/** Arguments of {@link SPLITK_REDUCE}. */
export interface SplitKReduceArgs {
  /** Elements of one slice (m · n). */
  n: number;
  splits: number;
  alpha: number;
  dtype: DType;
}

/** The split-K reduce kernel: input part (f32), output y. */
export const SPLITK_REDUCE: KernelRecord<SplitKReduceArgs> = {
  name: "splitk_reduce",
  template: "gemm/splitk_reduce",
  includes: ["gemm/splitk_sum"],
  bindings: [{ name: "part", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }, { name: "splits", type: "u32" }, { name: "alpha", type: "f32" }],
  check: ([part], a) =>
    expectSize(part.size, a.splits * a.n, "splitKReduce", `partial sums [${a.splits}, ${a.n}]`),
  outputs: (
    _,
    a,
  ) => [{ size: a.n, dtype: a.dtype, what: `splitKReduce: output of ${a.n} elements (${a.dtype})` }],
  specialise: (_, a) => reduceSpecialisation(a.dtype, a.splits),
  uniforms: (a) => ({ n: a.n, splits: a.splits, alpha: a.alpha }),
  // One workgroup per block of outputs (splitReduceLayout).
  geometry: (a) => ({ rows: Math.ceil(a.n / splitReduceLayout(a.splits).outputs) }),
  reference([part], { n, splits, alpha }, [y]) {
    const r = hostArray(y.dtype, n);
    for (let i = 0; i < n; i++) {
      let acc = 0;
      for (let s = 0; s < splits; s++) acc += part[s * n + i];
      r[i] = acc * alpha;
    }
    return [r];
  },
};

/** Arguments of {@link SPLITK_REDUCE_BIAS}: those of the plain reduce and the output's column count. */
export interface SplitKReduceBiasArgs extends SplitKReduceArgs {
  /** Columns of the [n / cols, cols] output: bias has this many elements, one per column. */
  cols: number;
}

/**
 * The split-K reduce of a GEMM with a bias epilogue: out[i] = alpha · sum over s of part[s · n + i] +
 * bias[i mod cols] (wgsl/gemm/splitk_reduce_bias.wgsl). A split GEMM's slices leave the bias out; this
 * adds it once, after the sum, so a Linear with bias may split k like one without.
 */
export const SPLITK_REDUCE_BIAS: KernelRecord<SplitKReduceBiasArgs> = {
  name: "splitk_reduce_bias",
  template: "gemm/splitk_reduce_bias",
  includes: ["gemm/splitk_sum"],
  bindings: [
    { name: "part", access: "read" },
    { name: "bias", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [
    { name: "n", type: "u32" },
    { name: "splits", type: "u32" },
    { name: "alpha", type: "f32" },
    { name: "cols", type: "u32" },
  ],
  check: ([part, bias], a) => {
    expectSize(part.size, a.splits * a.n, "splitKReduceBias", `partial sums [${a.splits}, ${a.n}]`);
    expectSize(bias.size, a.cols, "splitKReduceBias", `bias [${a.cols}]`);
    if (a.cols < 1 || a.n % a.cols !== 0) {
      throw new ShapeError(`splitKReduceBias: ${a.n} outputs do not make rows of ${a.cols} columns`);
    }
    if (bias.dtype !== a.dtype) {
      throw new DTypeError(`splitKReduceBias: bias is ${bias.dtype} but the output is ${a.dtype}`);
    }
  },
  outputs: (_, a) => [{
    size: a.n,
    dtype: a.dtype,
    what: `splitKReduceBias: output of ${a.n} elements (${a.dtype})`,
  }],
  specialise: (_, a) => reduceSpecialisation(a.dtype, a.splits),
  uniforms: (a) => ({ n: a.n, splits: a.splits, alpha: a.alpha, cols: a.cols }),
  geometry: (a) => ({ rows: Math.ceil(a.n / splitReduceLayout(a.splits).outputs) }),
  reference([part, bias], { n, splits, alpha, cols }, [y]) {
    const r = hostArray(y.dtype, n);
    for (let i = 0; i < n; i++) {
      let acc = 0;
      for (let s = 0; s < splits; s++) acc += part[s * n + i];
      r[i] = acc * alpha + bias[i % cols];
    }
    return [r];
  },
};
