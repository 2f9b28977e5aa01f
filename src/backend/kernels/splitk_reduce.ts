/**
 * `splitk_reduce`: out[i] = alpha · sum over s of part[s · n + i], the second dispatch of a split-K GEMM
 * (webgpu/gemm.ts) adding the slices' f32 partial products (wgsl/gemm/splitk_reduce.wgsl).
 * @module
 */
import type { DType } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import { expectSize, type KernelRecord } from "./record.ts";

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
  bindings: [{ name: "part", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }, { name: "splits", type: "u32" }, { name: "alpha", type: "f32" }],
  check: ([part], a) =>
    expectSize(part.size, a.splits * a.n, "splitKReduce", `partial sums [${a.splits}, ${a.n}]`),
  outputs: (
    _,
    a,
  ) => [{ size: a.n, dtype: a.dtype, what: `splitKReduce: output of ${a.n} elements (${a.dtype})` }],
  specialise: (_, a) => ({ T: a.dtype }),
  uniforms: (a) => ({ n: a.n, splits: a.splits, alpha: a.alpha }),
  geometry: (a) => ({ elements: a.n }),
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
