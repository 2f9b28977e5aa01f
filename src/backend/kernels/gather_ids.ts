/**
 * `gatherIds`: out[i] = table[ids[i]] for a [rows, dim] table, with the ids in a device storage of f32
 * values (what {@link ARGMAX} and {@link SAMPLE_TOKEN} write), so one decoding step's tokens embed into
 * the next without a read back (wgsl/gather_ids.wgsl). An id outside the table reads row 0.
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of {@link GATHER_IDS}. */
export interface GatherIdsArgs {
  /** Rows of the table. */
  rows: number;
  /** Width of a row. */
  dim: number;
  /** Number of ids. */
  count: number;
}

/** The gather kernel: inputs table [rows, dim] and ids [count] (f32), output [count, dim]. */
export const GATHER_IDS: KernelRecord<GatherIdsArgs> = {
  name: "gather_ids",
  template: "gather_ids",
  bindings: [{ name: "table", access: "read" }, { name: "ids", access: "read" }, {
    name: "y",
    access: "write",
  }],
  params: [{ name: "rows", type: "u32" }, { name: "dim", type: "u32" }, { name: "count", type: "u32" }],
  check([table, ids], a) {
    if (ids.dtype !== "f32") throw new DTypeError(`gatherIds: ids must be f32, got ${ids.dtype}`);
    if (!(a.rows >= 1 && a.dim >= 1)) throw new ShapeError(`gatherIds: empty table [${a.rows}, ${a.dim}]`);
    expectSize(table.size, a.rows * a.dim, "gatherIds", `table [${a.rows}, ${a.dim}]`);
    expectSize(ids.size, a.count, "gatherIds", `ids [${a.count}]`);
  },
  outputs: ([t], a) => [{
    size: a.count * a.dim,
    dtype: t.dtype,
    what: `gatherIds: output [${a.count}, ${a.dim}] (${t.dtype})`,
  }],
  specialise: ([t]) => ({ T: t.dtype }),
  uniforms: (a) => ({ rows: a.rows, dim: a.dim, count: a.count }),
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([t, ids], { rows, dim, count }, [y]) {
    const r = hostArray(y.dtype, count * dim);
    for (let i = 0; i < count; i++) {
      const id = Math.trunc(ids[i]);
      const row = id >= 0 && id < rows ? id : 0;
      r.set(t.subarray(row * dim, row * dim + dim), i * dim);
    }
    return [r];
  },
};
