/**
 * `scatterAddRows`: adds rows of src [ids.length, dim] into a zero [rows, dim] table at ids, negative
 * ids skipped (wgsl/scatter_add_rows.wgsl: one invocation per output element, no atomics, reading the
 * source rows of its output row from a compressed list built on the host).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of {@link SCATTER_ADD_ROWS}. */
export interface ScatterAddRowsArgs {
  ids: Int32Array;
  rows: number;
  dim: number;
}

/** Compressed rows: csr[r] .. csr[r + 1] delimit (in csr[rows + 1 ..]) the source rows of output row r. */
function compressedRows({ ids, rows }: ScatterAddRowsArgs): Uint32Array {
  const csr = new Uint32Array(rows + 1 + ids.length);
  for (let i = 0; i < ids.length; i++) if (ids[i] >= 0) csr[ids[i] + 1]++;
  for (let r = 0; r < rows; r++) csr[r + 1] += csr[r];
  const fillAt = csr.slice(0, rows);
  for (let i = 0; i < ids.length; i++) if (ids[i] >= 0) csr[rows + 1 + fillAt[ids[i]]++] = i;
  return csr;
}

/** The scatter-add kernel: input src, scratch csr, output y. */
export const SCATTER_ADD_ROWS: KernelRecord<ScatterAddRowsArgs> = {
  name: "scatter_add_rows",
  template: "scatter_add_rows",
  bindings: [{ name: "src", access: "read" }, { name: "csr", access: "read" }, {
    name: "y",
    access: "write",
  }],
  params: [{ name: "rows", type: "u32" }, { name: "dim", type: "u32" }],
  check([src], { ids, rows, dim }) {
    expectSize(src.size, ids.length * dim, "scatterAddRows", `source [${ids.length}, ${dim}]`);
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] >= rows) {
        throw new ShapeError(
          `scatterAddRows: id ${ids[i]} at position ${i} is out of range for ${rows} rows`,
        );
      }
    }
  },
  outputs: ([s], a) => [{
    size: a.rows * a.dim,
    dtype: s.dtype,
    what: `scatterAddRows: output [${a.rows}, ${a.dim}] (${s.dtype})`,
  }],
  specialise: ([s]) => ({ T: s.dtype }),
  uniforms: (a) => ({ rows: a.rows, dim: a.dim }),
  scratch: (a) => [compressedRows(a)],
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([s], { ids, rows, dim }, [y]) {
    const acc = new Float64Array(rows * dim);
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] < 0) continue;
      for (let j = 0; j < dim; j++) acc[ids[i] * dim + j] += s[i * dim + j];
    }
    const r = hostArray(y.dtype, rows * dim);
    r.set(acc);
    return [r];
  },
};
