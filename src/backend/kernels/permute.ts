/**
 * `permute`: contiguous copy of x (of `shape`) with axes permuted, out axis i being input axis perm[i]
 * (wgsl/permute.wgsl).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { ShapeError } from "../../core/errors.ts";
import { collapseAxes, contiguousStrides, shapeElements } from "../shape.ts";
import { expectSize, type KernelRecord, MAX_RANK } from "./record.ts";

/** Arguments of {@link PERMUTE}. */
export interface PermuteArgs {
  shape: readonly number[];
  perm: readonly number[];
}

/** The permute kernel: input x, output y. */
export const PERMUTE: KernelRecord<PermuteArgs> = {
  name: "permute",
  template: "permute",
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "write" }],
  params: [
    { name: "n", type: "u32" },
    { name: "rank", type: "u32" },
    { name: "shape", type: "vec4u", count: MAX_RANK / 4 },
    { name: "src_strides", type: "vec4u", count: MAX_RANK / 4 },
  ],
  check: ([x], a) => expectSize(x.size, shapeElements(a.shape), "permute", `input [${a.shape}]`),
  outputs: ([x], a) => [{
    size: x.size,
    dtype: x.dtype,
    what: `permute: output [${a.perm.map((p) => a.shape[p])}] (${x.dtype})`,
  }],
  specialise: ([x]) => ({ T: x.dtype, MAX_RANK }),
  uniforms({ shape, perm }, [y]) {
    const inStrides = contiguousStrides(shape);
    const c = collapseAxes(perm.map((p) => shape[p]), [perm.map((p) => inStrides[p])]);
    if (c.shape.length > MAX_RANK) {
      throw new ShapeError(
        `permute: [${perm}] of [${shape}] needs ${c.shape.length} axes (at most ${MAX_RANK})`,
      );
    }
    return { n: y.size, rank: c.shape.length, shape: c.shape, src_strides: c.strides[0] };
  },
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([a], { shape, perm }, [y]) {
    const rank = shape.length;
    const inStrides = contiguousStrides(shape);
    const outShape = perm.map((p) => shape[p]);
    const st = perm.map((p) => inStrides[p]);
    const r = hostArray(y.dtype, a.length);
    const idx = new Array<number>(rank).fill(0);
    let src = 0;
    for (let i = 0; i < a.length; i++) {
      r[i] = a[src];
      for (let d = rank - 1; d >= 0; d--) {
        idx[d]++;
        src += st[d];
        if (idx[d] < outShape[d]) break;
        src -= st[d] * idx[d];
        idx[d] = 0;
      }
    }
    return [r];
  },
};
