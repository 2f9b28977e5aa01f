/**
 * `fill`: a new storage of `size` elements all equal to `value` (wgsl/fill.wgsl).
 * @module
 */
import type { DType } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import type { KernelRecord } from "./record.ts";

/** Arguments of {@link FILL}. */
export interface FillArgs {
  size: number;
  value: number;
  dtype: DType;
}

/** The fill kernel. */
export const FILL: KernelRecord<FillArgs> = {
  name: "fill",
  template: "fill",
  bindings: [{ name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }, { name: "value", type: "f32" }],
  outputs: (
    _,
    a,
  ) => [{ size: a.size, dtype: a.dtype, what: `fill: output of ${a.size} elements (${a.dtype})` }],
  specialise: (_, a) => ({ T: a.dtype }),
  uniforms: (a) => ({ n: a.size, value: a.value }),
  geometry: (a) => ({ elements: a.size }),
  reference: (_, a) => [hostArray(a.dtype, a.size).fill(a.value)],
};
