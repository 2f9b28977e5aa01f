/**
 * `gatherRows`: out[i] = table[ids[i]] for a [rows, dim] table (wgsl/gather_rows.wgsl). A table split into
 * row blocks (larger than one binding: src/backend/webgpu/blocks.ts) is gathered one block at a time into
 * the same output, each dispatch binding the block of rows [lo, hi) and writing only the rows it holds.
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { ShapeError } from "../../core/errors.ts";
import type { KernelRecord } from "./record.ts";

/** Arguments of {@link GATHER_ROWS}. */
export interface GatherRowsArgs {
  ids: Int32Array;
  dim: number;
  /** The rows the bound table holds: [lo, hi) (default: all of them); other rows are not written. */
  lo?: number;
  hi?: number;
}

/** The gather kernel: input table, scratch ids, output y. */
export const GATHER_ROWS: KernelRecord<GatherRowsArgs> = {
  name: "gather_rows",
  template: "gather_rows",
  bindings: [{ name: "table", access: "read" }, { name: "ids", access: "read" }, {
    name: "y",
    access: "write",
  }],
  params: [
    { name: "count", type: "u32" },
    { name: "dim", type: "u32" },
    { name: "lo", type: "u32" },
    { name: "hi", type: "u32" },
  ],
  check([table], { ids, dim }) {
    const rows = dim === 0 ? 0 : table.size / dim;
    for (let i = 0; i < ids.length; i++) {
      if (!(ids[i] >= 0 && ids[i] < rows)) {
        throw new ShapeError(
          `gatherRows: id ${ids[i]} at position ${i} is out of range for a table of ${rows} rows`,
        );
      }
    }
  },
  outputs: ([t], a) => [{
    size: a.ids.length * a.dim,
    dtype: t.dtype,
    what: `gatherRows: output [${a.ids.length}, ${a.dim}] (${t.dtype})`,
  }],
  specialise: ([t]) => ({ T: t.dtype }),
  uniforms: (a) => ({ count: a.ids.length, dim: a.dim, lo: a.lo ?? 0, hi: a.hi ?? 0xffffffff }),
  scratch: (a) => [a.ids],
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([t], { ids, dim, lo = 0, hi = Infinity }, [y]) {
    const r = hostArray(y.dtype, ids.length * dim);
    for (let i = 0; i < ids.length; i++) {
      const row = ids[i] - lo;
      if (ids[i] >= lo && ids[i] < hi) r.set(t.subarray(row * dim, row * dim + dim), i * dim);
    }
    return [r];
  },
};
