/**
 * `gatherRows`: out[i] = table[ids[i]] for a [rows, dim] table (wgsl/gather_rows.wgsl).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { ShapeError } from "../../core/errors.ts";
import type { KernelRecord } from "./record.ts";

/** Arguments of {@link GATHER_ROWS}. */
export interface GatherRowsArgs {
  ids: Int32Array;
  dim: number;
}

/** The gather kernel: input table, scratch ids, output y. */
export const GATHER_ROWS: KernelRecord<GatherRowsArgs> = {
  name: "gather_rows",
  template: "gather_rows",
  bindings: [{ name: "table", access: "read" }, { name: "ids", access: "read" }, {
    name: "y",
    access: "write",
  }],
  params: [{ name: "count", type: "u32" }, { name: "dim", type: "u32" }],
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
  uniforms: (a) => ({ count: a.ids.length, dim: a.dim }),
  scratch: (a) => [a.ids],
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([t], { ids, dim }, [y]) {
    const r = hostArray(y.dtype, ids.length * dim);
    for (let i = 0; i < ids.length; i++) r.set(t.subarray(ids[i] * dim, ids[i] * dim + dim), i * dim);
    return [r];
  },
};
