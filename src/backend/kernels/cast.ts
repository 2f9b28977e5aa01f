/**
 * `cast`: converts element type (wgsl/cast.wgsl).
 * @module
 */
import type { DType } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import type { KernelRecord } from "./record.ts";

/** Arguments of {@link CAST}: the target dtype. */
export interface CastArgs {
  dtype: DType;
}

/** The cast kernel: input x, output y. */
export const CAST: KernelRecord<CastArgs> = {
  name: "cast",
  template: "cast",
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }],
  outputs: (
    [x],
    a,
  ) => [{ size: x.size, dtype: a.dtype, what: `cast: output of ${x.size} elements (${a.dtype})` }],
  specialise: ([x], a) => ({ S: x.dtype, T: a.dtype }),
  uniforms: (_, [y]) => ({ n: y.size }),
  geometry: (_, [y]) => ({ elements: y.size }),
  reference: ([x], a) => {
    const r = hostArray(a.dtype, x.length);
    for (let i = 0; i < x.length; i++) r[i] = x[i];
    return [r];
  },
};
