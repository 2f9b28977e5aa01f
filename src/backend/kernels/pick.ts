/**
 * `pick`: one element per row of [rows, n], out[i] = x[i, idx[i]] (0 where idx[i] < 0), and its inverse
 * `unpick`: [rows, n] zeros with out[i, idx[i]] = src[i] (wgsl/pick.wgsl, wgsl/unpick.wgsl).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of {@link PICK} and {@link UNPICK}. */
export interface PickArgs {
  idx: Int32Array;
  n: number;
}

/** The pick kernel: input x, scratch idx, output y. */
export const PICK: KernelRecord<PickArgs> = {
  name: "pick",
  template: "pick",
  bindings: [{ name: "x", access: "read" }, { name: "idx", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }],
  check([x], { idx, n }) {
    expectSize(x.size, idx.length * n, "pick", `input [${idx.length}, ${n}]`);
    for (let i = 0; i < idx.length; i++) {
      if (idx[i] >= n) {
        throw new ShapeError(`pick: index ${idx[i]} at row ${i} is out of range for ${n} columns`);
      }
    }
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.idx.length, dtype: x.dtype, what: `pick: output [${a.idx.length}] (${x.dtype})` }],
  specialise: ([x]) => ({ T: x.dtype }),
  uniforms: (a) => ({ rows: a.idx.length, n: a.n }),
  scratch: (a) => [a.idx],
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([x], { idx, n }, [y]) {
    const r = hostArray(y.dtype, idx.length);
    for (let i = 0; i < idx.length; i++) r[i] = idx[i] < 0 ? 0 : x[i * n + idx[i]];
    return [r];
  },
};

/** The unpick kernel: input src, scratch idx, output y. */
export const UNPICK: KernelRecord<PickArgs> = {
  name: "unpick",
  template: "unpick",
  bindings: [{ name: "src", access: "read" }, { name: "idx", access: "read" }, {
    name: "y",
    access: "write",
  }],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }],
  check: ([s], { idx }) => expectSize(s.size, idx.length, "unpick", `source [${idx.length}]`),
  outputs: ([s], a) => [{
    size: a.idx.length * a.n,
    dtype: s.dtype,
    what: `unpick: output [${a.idx.length}, ${a.n}] (${s.dtype})`,
  }],
  specialise: ([s]) => ({ T: s.dtype }),
  uniforms: (a) => ({ rows: a.idx.length, n: a.n }),
  scratch: (a) => [a.idx],
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([s], { idx, n }, [y]) {
    const r = hostArray(y.dtype, idx.length * n);
    for (let i = 0; i < idx.length; i++) if (idx[i] >= 0) r[i * n + idx[i]] = s[i];
    return [r];
  },
};
