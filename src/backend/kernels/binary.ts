/**
 * `binary`: broadcasting element-wise op of {@link BinaryOp}; shapes right-aligned, `outShape` their
 * broadcast (wgsl/binary.wgsl).
 * @module
 */
import type { BinaryOp } from "../backend.ts";
import { hostArray } from "../../core/dtype.ts";
import { ShapeError } from "../../core/errors.ts";
import { broadcastStrides, collapseAxes, shapeElements } from "../shape.ts";
import { type KernelRecord, MAX_RANK } from "./record.ts";

/** The CPU definitions of the binary functions (the WGSL twins are in wgsl/binary.wgsl). */
export const BINARY_FUNCTIONS: Readonly<Record<BinaryOp, (a: number, b: number) => number>> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  max: (a, b) => (a >= b || Number.isNaN(a) ? a : b),
  gt: (a, b) => (a > b ? 1 : 0),
};

/** Arguments of {@link BINARY}. */
export interface BinaryArgs {
  op: BinaryOp;
  aShape: readonly number[];
  bShape: readonly number[];
  outShape: readonly number[];
}

/** The output shape collapsed for the GPU, with both operands' strides. */
function collapsed(a: BinaryArgs): { shape: number[]; strides: number[][] } {
  return collapseAxes(a.outShape, [
    broadcastStrides(a.aShape, a.outShape),
    broadcastStrides(a.bShape, a.outShape),
  ]);
}

/** The binary kernel: inputs a, b, output y. */
export const BINARY: KernelRecord<BinaryArgs> = {
  name: "binary",
  template: "binary",
  bindings: [{ name: "a", access: "read" }, { name: "b", access: "read" }, { name: "y", access: "write" }],
  params: [
    { name: "n", type: "u32" },
    { name: "rank", type: "u32" },
    { name: "shape", type: "vec4u", count: MAX_RANK / 4 },
    { name: "a_strides", type: "vec4u", count: MAX_RANK / 4 },
    { name: "b_strides", type: "vec4u", count: MAX_RANK / 4 },
  ],
  check([a, b], args) {
    const { op, aShape, bShape } = args;
    if (a.size !== shapeElements(aShape) || b.size !== shapeElements(bShape)) {
      throw new ShapeError(
        `${op}: operand sizes ${a.size} and ${b.size} do not match shapes [${aShape}] and [${bShape}]`,
      );
    }
  },
  outputs: ([a], args) => [{
    size: shapeElements(args.outShape),
    dtype: a.dtype,
    what: `${args.op}: output [${args.outShape}] (${a.dtype})`,
  }],
  specialise: ([a], args) => ({ T: a.dtype, OP: args.op, MAX_RANK }),
  uniforms(args, [y]) {
    const c = collapsed(args);
    if (c.shape.length > MAX_RANK) {
      throw new ShapeError(
        `${args.op}: broadcasting [${args.aShape}] with [${args.bShape}] needs ${c.shape.length} axes (at most ${MAX_RANK})`,
      );
    }
    return {
      n: y.size,
      rank: c.shape.length,
      shape: c.shape,
      a_strides: c.strides[0],
      b_strides: c.strides[1],
    };
  },
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([av, bv], args, [y]) {
    const { outShape } = args;
    const f = BINARY_FUNCTIONS[args.op];
    const n = y.size;
    const r = hostArray(y.dtype, n);
    const rank = outShape.length;
    const as = broadcastStrides(args.aShape, outShape), bs = broadcastStrides(args.bShape, outShape);
    const idx = new Array<number>(rank).fill(0);
    let ai = 0, bi = 0;
    for (let i = 0; i < n; i++) {
      r[i] = f(av[ai], bv[bi]);
      // Odometer increment keeps the two source offsets in step with the output index.
      for (let d = rank - 1; d >= 0; d--) {
        idx[d]++;
        ai += as[d];
        bi += bs[d];
        if (idx[d] < outShape[d]) break;
        ai -= as[d] * idx[d];
        bi -= bs[d] * idx[d];
        idx[d] = 0;
      }
    }
    return [r];
  },
};
