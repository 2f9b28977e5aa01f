/**
 * `affine`: out[i] = x[i] * mul + add (wgsl/affine.wgsl).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import type { KernelRecord } from "./record.ts";

/** Arguments of {@link AFFINE}. */
export interface AffineArgs {
  mul: number;
  add: number;
}

/** The affine kernel: input x, output y. */
export const AFFINE: KernelRecord<AffineArgs> = {
  name: "affine",
  template: "affine",
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }, { name: "mul", type: "f32" }, { name: "add", type: "f32" }],
  outputs: ([x]) => [{ size: x.size, dtype: x.dtype, what: `affine: output of ${x.size} elements` }],
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a, [y]) => ({ n: y.size, mul: a.mul, add: a.add }),
  geometry: (_, [y]) => ({ elements: y.size }),
  reference: ([x], { mul, add }, [y]) => {
    const r = hostArray(y.dtype, x.length);
    // Adding a zero would turn −0 into +0, so copies (detach, reshape) and scales would not be exact.
    for (let i = 0; i < x.length; i++) r[i] = add === 0 ? x[i] * mul : x[i] * mul + add;
    return [r];
  },
};
