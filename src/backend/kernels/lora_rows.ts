/**
 * `loraRows`: each row of a batch through its own LoRA adapter in one dispatch (wgsl/lora_rows.wgsl), the
 * mixed-batch LoRA of multi-adapter serving (Punica's and S-LoRA's SGMV, vLLM's shrink / expand):
 * y[m] = y0[m] + scale_s · B_s A_s x[m] where s = slots[m] is the row's adapter slot, or y[m] = y0[m]
 * for a row without one (PEFT's `"__base__"`). y0 is the base layer's output, computed beforehand by the
 * ordinary GEMM, so the base weight is read once for the whole batch whatever the adapters.
 *
 * The adapters' weights come packed: every slot's A_s [r_s, k] row-major at element `aOffset` of `a`,
 * its B_s [n, r_s] at `bOffset` of `b`. Slots may have different ranks (0 to {@link LORA_ROWS_MAX_RANK})
 * and the rows of one slot need not be adjacent.
 * @module
 */
import { f32Bits, hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";
import { roundTo } from "./gemv.ts";

/** The slot id of a row without an adapter. */
export const NO_SLOT = 0xffffffff;

/** The largest rank a slot may have (workgroup memory holds one row's A x). */
export const LORA_ROWS_MAX_RANK = 1024;

/** One adapter of the packed set. */
export interface LoraRowsSlot {
  rank: number;
  /** Element offset of A_s [rank, k] in the packed A. */
  aOffset: number;
  /** Element offset of B_s [n, rank] in the packed B. */
  bOffset: number;
  scale: number;
}

/** Arguments of {@link LORA_ROWS}. */
export interface LoraRowsArgs {
  /** Rows of x and y. */
  m: number;
  /** Input features. */
  k: number;
  /** Output features. */
  n: number;
  /** Each row's slot index into `slots`, or {@link NO_SLOT}. */
  rowSlots: Uint32Array;
  slots: readonly LoraRowsSlot[];
}

/** The rank bound a pipeline is compiled for: the largest rank rounded up to a power of two, at least 8. */
export function loraRowsRankBound(slots: readonly LoraRowsSlot[]): number {
  const r = Math.max(8, ...slots.map((s) => s.rank));
  return 2 ** Math.ceil(Math.log2(r));
}

/**
 * Lanes summing one rank's dot product: as many as fit for all R ranks in one round of a 256-wide
 * workgroup (the backend's size), 1 to 32, a power of two.
 */
export function loraRowsLanes(rankBound: number): number {
  return Math.max(1, Math.min(32, 256 / rankBound));
}

/** The slot table as the kernel reads it: rank, A offset, B offset and the scale's bits per slot. */
function slotWords(slots: readonly LoraRowsSlot[]): Uint32Array {
  const w = new Uint32Array(Math.max(4, slots.length * 4));
  slots.forEach((s, i) => w.set([s.rank, s.aOffset, s.bOffset, f32Bits(s.scale)], i * 4));
  return w;
}

/** The mixed-batch LoRA kernel: inputs x [m, k], y0 [m, n], packed a and b; scratch row slots and slot table. */
export const LORA_ROWS: KernelRecord<LoraRowsArgs> = {
  name: "lora_rows",
  template: "lora_rows",
  bindings: [
    { name: "x", access: "read" },
    { name: "y0", access: "read" },
    { name: "a", access: "read" },
    { name: "b", access: "read" },
    { name: "slots", access: "read" },
    { name: "info", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [{ name: "k", type: "u32" }, { name: "n", type: "u32" }],
  check([x, y0, a, b], { m, k, n, rowSlots, slots }) {
    const op = "loraRows";
    checkSizes(op, m, k, n);
    if (x.dtype !== y0.dtype) {
      throw new DTypeError(`${op}: x is ${x.dtype} but the base output y0 is ${y0.dtype}`);
    }
    if (a.dtype !== b.dtype) throw new DTypeError(`${op}: the packed A is ${a.dtype} but B is ${b.dtype}`);
    expectSize(x.size, m * k, op, `x [${m}, ${k}]`);
    expectSize(y0.size, m * n, op, `y0 [${m}, ${n}]`);
    expectSize(rowSlots.length, m, op, "the row slots");
    checkSlots(op, a, b, k, n, slots);
    rowSlots.forEach((s, r) => {
      if (s !== NO_SLOT && s >= slots.length) {
        throw new ShapeError(`${op}: row ${r} names slot ${s} but there are ${slots.length} slots`);
      }
    });
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.m * a.n, dtype: x.dtype, what: `loraRows: output [${a.m}, ${a.n}] (${x.dtype})` }],
  specialise: ([x, , a], args) => {
    const R = loraRowsRankBound(args.slots), L = loraRowsLanes(R);
    return { T: x.dtype, TA: a.dtype, R, L, HALF_L: L >> 1 };
  },
  uniforms: (a) => ({ k: a.k, n: a.n }),
  scratch: (a) => [a.rowSlots, slotWords(a.slots)],
  geometry: (a) => ({ rows: a.m }),
  reference([x, y0, a, b], { m, k, n, rowSlots, slots }, [out]) {
    const y = hostArray(out.dtype, m * n);
    const t = new Float64Array(LORA_ROWS_MAX_RANK);
    for (let row = 0; row < m; row++) {
      const id = rowSlots[row];
      const s = id === NO_SLOT ? null : slots[id];
      for (let j = 0; j < (s?.rank ?? 0); j++) {
        let acc = 0;
        for (let i = 0; i < k; i++) acc += x[row * k + i] * a[s!.aOffset + j * k + i];
        t[j] = acc;
      }
      for (let o = 0; o < n; o++) {
        let acc = 0;
        for (let j = 0; j < (s?.rank ?? 0); j++) acc += t[j] * b[s!.bOffset + o * s!.rank + j];
        y[row * n + o] = y0[row * n + o] + (s?.scale ?? 0) * acc;
      }
    }
    return [y];
  },
};

// -------------------------------------------------------------------------------------------------
// Backward: two dispatches for the whole batch, whatever the number of adapters.
// -------------------------------------------------------------------------------------------------

/**
 * One adapter of the packed set in a backward call: a forward slot plus the run of `order` (the batch's
 * token rows sorted by slot) that holds its rows.
 */
export interface LoraRowsGradSlot extends LoraRowsSlot {
  /** Index into `order` of the slot's first row. */
  rowStart: number;
  /** How many rows use the slot. */
  rowCount: number;
}

/** Arguments of {@link LORA_ROWS_BACK}. */
export interface LoraRowsBackArgs {
  m: number;
  k: number;
  n: number;
  /** Each row's slot index into `slots`, or {@link NO_SLOT}. */
  rowSlots: Uint32Array;
  slots: readonly LoraRowsSlot[];
  /** Whether to compute dx (false: the dx output is one unwritten element). */
  needDx: boolean;
}

/** Arguments of {@link LORA_ROWS_GRAD}. */
export interface LoraRowsGradArgs {
  m: number;
  k: number;
  n: number;
  /** Elements of the packed dA and dB to produce (the packed A's and B's sizes). */
  aSize: number;
  bSize: number;
  /** Every row with an adapter, grouped by slot (each slot's rows at its `rowStart`). */
  order: Uint32Array;
  slots: readonly LoraRowsGradSlot[];
}

/** The row stride of the per-row rank vectors t = A x and u = Bᵀ dy: the largest rank, at least 1. */
export function loraRowsRankStride(slots: readonly LoraRowsSlot[]): number {
  return Math.max(1, ...slots.map((s) => s.rank));
}

/** The backward slot table: rank, A offset, B offset, scale bits, first row, row count, 2 unused. */
function gradSlotWords(slots: readonly (LoraRowsSlot & Partial<LoraRowsGradSlot>)[]): Uint32Array {
  const w = new Uint32Array(Math.max(8, slots.length * 8));
  slots.forEach((s, i) =>
    w.set([s.rank, s.aOffset, s.bOffset, f32Bits(s.scale), s.rowStart ?? 0, s.rowCount ?? 0], i * 8)
  );
  return w;
}

/** The checks both backward kernels share with the forward's: sizes, slots inside the packed buffers. */
function checkSlots(
  op: string,
  a: { size: number },
  b: { size: number },
  k: number,
  n: number,
  slots: readonly LoraRowsSlot[],
): void {
  slots.forEach((s, i) => {
    if (!(Number.isInteger(s.rank) && s.rank >= 0 && s.rank <= LORA_ROWS_MAX_RANK)) {
      throw new ShapeError(`${op}: slot ${i} has rank ${s.rank}; 0 to ${LORA_ROWS_MAX_RANK} fit`);
    }
    if (!(s.aOffset >= 0 && s.aOffset + s.rank * k <= a.size)) {
      throw new ShapeError(
        `${op}: slot ${i}'s A [${s.rank}, ${k}] at ${s.aOffset} runs past the packed A of ${a.size} elements`,
      );
    }
    if (!(s.bOffset >= 0 && s.bOffset + n * s.rank <= b.size)) {
      throw new ShapeError(
        `${op}: slot ${i}'s B [${n}, ${s.rank}] at ${s.bOffset} runs past the packed B of ${b.size} elements`,
      );
    }
    if (!Number.isFinite(s.scale)) throw new ShapeError(`${op}: slot ${i}'s scale ${s.scale} is not finite`);
  });
}

function checkSizes(op: string, m: number, k: number, n: number): void {
  if (!(Number.isInteger(m) && m >= 0 && Number.isInteger(k) && k >= 1 && Number.isInteger(n) && n >= 1)) {
    throw new ShapeError(`${op}: sizes must be m >= 0, k >= 1, n >= 1, got m ${m}, k ${k}, n ${n}`);
  }
}

/**
 * The mixed-batch backward's per-row pass (wgsl/lora_rows_back.wgsl), one workgroup per row m with slot
 * s: t[m] = A_s x[m] and u[m] = B_sᵀ dy[m] (f32, rank-stride rows, zero past the row's rank and for rows
 * without an adapter), and with `needDx` the LoRA part of the input gradient dx[m] = scale_s · A_sᵀ u[m]
 * (zero for rows without an adapter; the base layer's own gradient is added by autograd).
 * Inputs x [m, k], dy [m, n], packed a and b; outputs t, u [m · stride] and dx [m, k].
 */
export const LORA_ROWS_BACK: KernelRecord<LoraRowsBackArgs> = {
  name: "lora_rows_back",
  template: "lora_rows_back",
  bindings: [
    { name: "x", access: "read" },
    { name: "dy", access: "read" },
    { name: "a", access: "read" },
    { name: "b", access: "read" },
    { name: "slots", access: "read" },
    { name: "info", access: "read" },
    { name: "t", access: "write" },
    { name: "u", access: "write" },
    { name: "dx", access: "write" },
  ],
  params: [{ name: "k", type: "u32" }, { name: "n", type: "u32" }, { name: "rs", type: "u32" }],
  check([x, dy, a, b], { m, k, n, rowSlots, slots }) {
    const op = "loraRowsBackward";
    checkSizes(op, m, k, n);
    if (x.dtype !== dy.dtype) throw new DTypeError(`${op}: x is ${x.dtype} but dy is ${dy.dtype}`);
    if (a.dtype !== b.dtype) throw new DTypeError(`${op}: the packed A is ${a.dtype} but B is ${b.dtype}`);
    expectSize(x.size, m * k, op, `x [${m}, ${k}]`);
    expectSize(dy.size, m * n, op, `dy [${m}, ${n}]`);
    expectSize(rowSlots.length, m, op, "the row slots");
    checkSlots(op, a, b, k, n, slots);
    rowSlots.forEach((s, r) => {
      if (s !== NO_SLOT && s >= slots.length) {
        throw new ShapeError(`${op}: row ${r} names slot ${s} but there are ${slots.length} slots`);
      }
    });
  },
  outputs: ([x], a) => {
    const rs = loraRowsRankStride(a.slots);
    return [
      { size: a.m * rs, dtype: "f32", what: `loraRowsBackward: A x [${a.m}, ${rs}] (f32)` },
      { size: a.m * rs, dtype: "f32", what: `loraRowsBackward: Bᵀ dy [${a.m}, ${rs}] (f32)` },
      {
        size: a.needDx ? a.m * a.k : 1,
        dtype: x.dtype,
        what: `loraRowsBackward: dx [${a.m}, ${a.k}] (${x.dtype})`,
      },
    ];
  },
  specialise: ([x, , a], args) => {
    const R = loraRowsRankBound(args.slots), L = loraRowsLanes(R);
    return { T: x.dtype, TA: a.dtype, R, L, HALF_L: L >> 1, DX: args.needDx };
  },
  uniforms: (a) => ({ k: a.k, n: a.n, rs: loraRowsRankStride(a.slots) }),
  scratch: (a) => [a.rowSlots, gradSlotWords(a.slots)],
  geometry: (a) => ({ rows: a.m }),
  reference([x, dy, a, b], { m, k, n, rowSlots, slots, needDx }, [tSpec, uSpec, dxSpec]) {
    const rs = loraRowsRankStride(slots);
    const t = hostArray(tSpec.dtype, m * rs), u = hostArray(uSpec.dtype, m * rs);
    const dx = hostArray(dxSpec.dtype, dxSpec.size);
    for (let row = 0; row < m; row++) {
      const id = rowSlots[row];
      if (id === NO_SLOT) continue; // t, u and dx stay zero
      const s = slots[id];
      for (let j = 0; j < s.rank; j++) {
        let tj = 0, uj = 0;
        for (let i = 0; i < k; i++) tj += x[row * k + i] * a[s.aOffset + j * k + i];
        for (let o = 0; o < n; o++) uj += dy[row * n + o] * b[s.bOffset + o * s.rank + j];
        t[row * rs + j] = tj;
        u[row * rs + j] = uj;
      }
      if (!needDx) continue;
      // dx from u rounded to f32, as the kernel holds it
      const uRow = Float32Array.from({ length: s.rank }, (_, j) => u[row * rs + j]);
      for (let i = 0; i < k; i++) {
        let acc = 0;
        for (let j = 0; j < s.rank; j++) acc += uRow[j] * a[s.aOffset + j * k + i];
        dx[row * k + i] = s.scale * acc;
      }
    }
    return [t, u, dx];
  },
};

/**
 * The mixed-batch backward's weight gradients (wgsl/lora_rows_grad.wgsl), one invocation per element of
 * the packed dA and dB: for slot s with rows R_s, dA_s[j, i] = scale_s Σ_{m∈R_s} u[m, j] x[m, i] and
 * dB_s[o, j] = scale_s Σ_{m∈R_s} dy[m, o] t[m, j] (f32 sums), laid out as the packed A and B (elements
 * of no slot are zero). Inputs x [m, k], dy [m, n], t and u from {@link LORA_ROWS_BACK}; outputs the
 * packed dA and dB in the adapters' dtype `dtype`.
 */
export const LORA_ROWS_GRAD: KernelRecord<LoraRowsGradArgs & { dtype: "f32" | "f16" }> = {
  name: "lora_rows_grad",
  template: "lora_rows_grad",
  bindings: [
    { name: "x", access: "read" },
    { name: "dy", access: "read" },
    { name: "t", access: "read" },
    { name: "u", access: "read" },
    { name: "order", access: "read" },
    { name: "info", access: "read" },
    { name: "da", access: "write" },
    { name: "db", access: "write" },
  ],
  params: [
    { name: "k", type: "u32" },
    { name: "n", type: "u32" },
    { name: "rs", type: "u32" },
    { name: "slots", type: "u32" },
    { name: "a_size", type: "u32" },
    { name: "b_size", type: "u32" },
  ],
  check([x, dy, t, u], { m, k, n, aSize, bSize, order, slots }) {
    const op = "loraRowsBackward";
    checkSizes(op, m, k, n);
    if (x.dtype !== dy.dtype) throw new DTypeError(`${op}: x is ${x.dtype} but dy is ${dy.dtype}`);
    expectSize(x.size, m * k, op, `x [${m}, ${k}]`);
    expectSize(dy.size, m * n, op, `dy [${m}, ${n}]`);
    const rs = loraRowsRankStride(slots);
    expectSize(t.size, m * rs, op, `A x [${m}, ${rs}]`);
    expectSize(u.size, m * rs, op, `Bᵀ dy [${m}, ${rs}]`);
    checkSlots(op, { size: aSize }, { size: bSize }, k, n, slots);
    slots.forEach((s, i) => {
      if (!(s.rowStart >= 0 && s.rowCount >= 0 && s.rowStart + s.rowCount <= order.length)) {
        throw new ShapeError(
          `${op}: slot ${i}'s rows ${s.rowStart}..${s.rowStart + s.rowCount} run past the ${order.length} ` +
            `ordered rows`,
        );
      }
    });
    order.forEach((r, i) => {
      if (r >= m) throw new ShapeError(`${op}: ordered row ${i} is ${r} but the batch has ${m} rows`);
    });
  },
  outputs: (_, a) => [
    {
      size: a.aSize,
      dtype: a.dtype,
      what: `loraRowsBackward: packed dA of ${a.aSize} elements (${a.dtype})`,
    },
    {
      size: a.bSize,
      dtype: a.dtype,
      what: `loraRowsBackward: packed dB of ${a.bSize} elements (${a.dtype})`,
    },
  ],
  specialise: ([x], args) => ({ T: x.dtype, TA: args.dtype }),
  uniforms: (a) => ({
    k: a.k,
    n: a.n,
    rs: loraRowsRankStride(a.slots),
    slots: a.slots.length,
    a_size: a.aSize,
    b_size: a.bSize,
  }),
  scratch: (a) => [a.order, gradSlotWords(a.slots)],
  geometry: (a) => ({ elements: a.aSize + a.bSize }),
  reference([x, dy, t, u], { k, n, aSize, bSize, order, slots }, [daSpec, dbSpec]) {
    const rs = loraRowsRankStride(slots);
    const da = hostArray(daSpec.dtype, aSize), db = hostArray(dbSpec.dtype, bSize);
    for (const s of slots) {
      const rows = order.subarray(s.rowStart, s.rowStart + s.rowCount);
      for (let j = 0; j < s.rank; j++) {
        for (let i = 0; i < k; i++) {
          let acc = 0;
          for (const m of rows) acc += u[m * rs + j] * x[m * k + i];
          da[s.aOffset + j * k + i] = s.scale * acc;
        }
        for (let o = 0; o < n; o++) {
          let acc = 0;
          for (const m of rows) acc += dy[m * n + o] * t[m * rs + j];
          db[s.bOffset + o * s.rank + j] = s.scale * acc;
        }
      }
    }
    return [da, db];
  },
};

// -------------------------------------------------------------------------------------------------
// Decoding: the routed LoRA terms of up to three projections of one input in one dispatch.
// -------------------------------------------------------------------------------------------------

/** Numbers per (part, row) entry of a {@link LORA_ROWS_PARTS} table: rank, A offset, B offset, scale. */
export const LORA_ROWS_TABLE_WIDTH = 4;

/** Offsets a {@link LORA_ROWS_PARTS} table holds exactly: its entries are f32, exact below 2^24. */
export const LORA_ROWS_TABLE_MAX_OFFSET = 2 ** 24;

/** Arguments of {@link LORA_ROWS_PARTS}. */
export interface LoraRowsPartsArgs {
  /** Rows of x. */
  m: number;
  /** Input features. */
  k: number;
  /** Output columns of each part, side by side in y0 and y: [n0, n1, n2], a part of 0 columns absent. */
  parts: readonly [number, number, number];
  /** The largest rank in the table (the pipeline's rank bound is chosen from it). */
  maxRank: number;
  /** x is normalised on the fly as `gemvNorm` does (RMSNorm with the nw scale) when set. */
  norm: { eps: number } | null;
  /**
   * Whether the output is SwiGLU's product of the two halves of the columns, y [m, N / 2] =
   * silu(z[:, :N/2]) · z[:, N/2:] (z = y0 + the terms; gate then up), instead of z [m, N] itself.
   */
  glu: boolean;
  /**
   * Whether every A offset in the table is a multiple of 4 ({@link loraRowsPartsTable} says): with k a
   * multiple of 4 too, the kernel reads x and A as vec4.
   */
  aligned: boolean;
  /**
   * One workgroup per (row, 256 outputs) (default true: hardware GPUs, where the kernel is latency-bound)
   * or one per row (false: software adapters, where each workgroup's shrink is CPU time).
   */
  spread?: boolean;
}

/**
 * The table {@link LORA_ROWS_PARTS} reads, f32 [3, m, 4]: for part q and row r that row's adapter in the
 * part's packed A and B (rank, A offset, B offset, scale), or zeros (the base output) where `rows[q]`
 * is null or names null. `sizes[q]` are the part's packed A and B element counts, which every entry
 * must fit.
 * @throws {ShapeError} a part's list is not m long, or an entry does not fit its packed buffers (or is
 *   past what an f32 offset holds)
 */
export function loraRowsPartsTable(
  m: number,
  k: number,
  parts: readonly [number, number, number],
  rows: readonly (readonly (LoraRowsSlot | null)[] | null)[],
  sizes: readonly ({ a: number; b: number } | null)[],
): { table: Float32Array; maxRank: number; aligned: boolean } {
  const op = "loraRowsParts";
  const w = LORA_ROWS_TABLE_WIDTH;
  const table = new Float32Array(3 * m * w);
  let maxRank = 0, aligned = true;
  for (let q = 0; q < 3; q++) {
    const list = rows[q] ?? null;
    if (list === null) continue;
    if (list.length !== m) {
      throw new ShapeError(`${op}: part ${q} routes ${list.length} rows, the batch has ${m}`);
    }
    const size = sizes[q];
    const present = list.filter((s): s is LoraRowsSlot => s !== null);
    if (size === null || size === undefined) {
      if (present.length > 0) throw new ShapeError(`${op}: part ${q} has adapters but no packed buffers`);
      continue;
    }
    checkSlots(`${op} (part ${q})`, { size: size.a }, { size: size.b }, k, parts[q], present);
    list.forEach((s, r) => {
      if (s === null) return;
      if (
        s.aOffset + s.rank * k > LORA_ROWS_TABLE_MAX_OFFSET ||
        s.bOffset + parts[q] * s.rank > LORA_ROWS_TABLE_MAX_OFFSET
      ) {
        throw new ShapeError(
          `${op}: part ${q} row ${r}'s adapter ends past element ${LORA_ROWS_TABLE_MAX_OFFSET} of its packed buffers`,
        );
      }
      table.set([s.rank, s.aOffset, s.bOffset, s.scale], (q * m + r) * w);
      maxRank = Math.max(maxRank, s.rank);
      aligned &&= s.aOffset % 4 === 0;
    });
  }
  return { table, maxRank, aligned };
}

/** Outputs per workgroup of {@link LORA_ROWS_PARTS}: the 256-wide workgroup's, or the whole row's. */
const partsSpan = (a: LoraRowsPartsArgs) => {
  const total = a.parts[0] + a.parts[1] + a.parts[2], n = a.glu ? total / 2 : total;
  return a.spread === false ? Math.max(1, n) : 256;
};

/** Workgroups per row of {@link LORA_ROWS_PARTS}. */
const partsChunks = (a: LoraRowsPartsArgs) => {
  const total = a.parts[0] + a.parts[1] + a.parts[2];
  return Math.max(1, Math.ceil((a.glu ? total / 2 : total) / partsSpan(a)));
};

/**
 * The routed LoRA terms of a decoding step (wgsl/lora_rows_parts.wgsl): up to three projections of one
 * input x [m, k] (q, k and v; gate and up; or one), each row through its own adapter per part, added to
 * the base outputs y0 [m, n0 + n1 + n2] (the projections' columns side by side, as `gemvNorm` writes
 * them): z[r, part q's columns] = y0 + scale · B_q,s (A_q,s x̂[r]), with x̂ = x, or with `norm` x's
 * RMSNorm computed in the kernel as `gemvNorm` does. The output is z, or with `glu` SwiGLU's product of
 * its halves. Each part's adapters come packed (a_q, b_q as {@link LORA_ROWS}); the f32 table
 * ({@link loraRowsPartsTable}) says where each row's adapter sits per part, and lives on the device, so a
 * generation uploads it once. A table entry of rank 0 leaves the row's columns at y0.
 *
 * One workgroup per row and span of outputs (`spread`: 256 outputs on hardware GPUs, the whole row on
 * software adapters). Inputs: x, nw (the norm's scale, any storage of x's dtype without `norm`), y0, a0,
 * a1, a2, b0, b1, b2 (an absent part's may be any storage of the adapters' dtype), table; output y: 11
 * storage bindings, past WebGPU's default limit of 8 (the device asks for the adapter's own limit, as
 * `gemvNorm`'s 10 need too).
 */
export const LORA_ROWS_PARTS: KernelRecord<LoraRowsPartsArgs> = {
  name: "lora_rows_parts",
  template: "lora_rows_parts",
  bindings: [
    { name: "x", access: "read" },
    { name: "nw", access: "read" },
    { name: "y0", access: "read" },
    { name: "a0", access: "read" },
    { name: "a1", access: "read" },
    { name: "a2", access: "read" },
    { name: "b0", access: "read" },
    { name: "b1", access: "read" },
    { name: "b2", access: "read" },
    { name: "table", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [
    { name: "m", type: "u32" },
    { name: "k", type: "u32" },
    { name: "n0", type: "u32" },
    { name: "n1", type: "u32" },
    { name: "n2", type: "u32" },
    { name: "eps", type: "f32" },
    { name: "chunks", type: "u32" },
    { name: "span", type: "u32" },
  ],
  check(inputs, { m, k, parts, maxRank, norm, glu }) {
    const op = "loraRowsParts";
    if (inputs.length !== 10) throw new ShapeError(`${op}: takes 10 inputs, got ${inputs.length}`);
    if (!(parts.length === 3 && parts.every((n) => Number.isInteger(n) && n >= 0))) {
      throw new ShapeError(`${op}: parts must be three column counts, got [${parts}]`);
    }
    const total = parts[0] + parts[1] + parts[2];
    checkSizes(op, m, k, total);
    if (glu && total % 2 !== 0) {
      throw new ShapeError(`${op}: a SwiGLU output needs an even column count, got ${total}`);
    }
    if (!(Number.isInteger(maxRank) && maxRank >= 0 && maxRank <= LORA_ROWS_MAX_RANK)) {
      throw new ShapeError(`${op}: the largest rank ${maxRank} is not 0 to ${LORA_ROWS_MAX_RANK}`);
    }
    if (norm !== null && !(norm.eps >= 0)) {
      throw new ShapeError(`${op}: eps must be non-negative, got ${norm.eps}`);
    }
    const [x, nw, y0, a0] = inputs;
    for (const [i, what] of [[1, "the norm weight"], [2, "y0"]] as const) {
      if (inputs[i].dtype !== x.dtype) {
        throw new DTypeError(`${op}: x is ${x.dtype} but ${what} is ${inputs[i].dtype}`);
      }
    }
    for (let i = 4; i < 9; i++) {
      if (inputs[i].dtype !== a0.dtype) {
        throw new DTypeError(`${op}: the packed adapters mix dtypes (${a0.dtype} and ${inputs[i].dtype})`);
      }
    }
    if (inputs[9].dtype !== "f32") {
      throw new DTypeError(`${op}: the table must be f32, got ${inputs[9].dtype}`);
    }
    expectSize(x.size, m * k, op, `x [${m}, ${k}]`);
    if (norm !== null) expectSize(nw.size, k, op, `norm weight [${k}]`);
    expectSize(y0.size, m * total, op, `y0 [${m}, ${total}]`);
    expectSize(
      inputs[9].size,
      3 * m * LORA_ROWS_TABLE_WIDTH,
      op,
      `the table [3, ${m}, ${LORA_ROWS_TABLE_WIDTH}]`,
    );
  },
  outputs: ([x], a) => {
    const total = a.parts[0] + a.parts[1] + a.parts[2], n = a.glu ? total / 2 : total;
    return [{ size: a.m * n, dtype: x.dtype, what: `loraRowsParts: output [${a.m}, ${n}] (${x.dtype})` }];
  },
  specialise: ([x, , , a0], args) => {
    const R = loraRowsRankBound([{ rank: args.maxRank, aOffset: 0, bOffset: 0, scale: 0 }]);
    const L = loraRowsLanes(R);
    return {
      T: x.dtype,
      TA: a0.dtype,
      R,
      L,
      HALF_L: L >> 1,
      NORM: args.norm !== null,
      GLU: args.glu,
      VEC: args.aligned && args.k % 4 === 0,
    };
  },
  uniforms: (a) => ({
    m: a.m,
    k: a.k,
    n0: a.parts[0],
    n1: a.parts[1],
    n2: a.parts[2],
    eps: a.norm?.eps ?? 0,
    chunks: partsChunks(a),
    span: partsSpan(a),
  }),
  geometry: (a) => ({ rows: a.m * partsChunks(a) }),
  reference(inputs, { m, k, parts, norm, glu }, [spec]) {
    const [x, nw, y0] = inputs, as = inputs.slice(3, 6), bs = inputs.slice(6, 9), table = inputs[9];
    const dt = spec.dtype, w = LORA_ROWS_TABLE_WIDTH;
    const total = parts[0] + parts[1] + parts[2], nOut = glu ? total / 2 : total;
    const y = hostArray(dt, m * nOut);
    const xn = new Float64Array(k), z = new Float64Array(total), t = new Float64Array(LORA_ROWS_MAX_RANK);
    for (let row = 0; row < m; row++) {
      let inv = 1;
      if (norm !== null) {
        let ss = 0;
        for (let c = 0; c < k; c++) ss += x[row * k + c] * x[row * k + c];
        inv = 1 / Math.sqrt(ss / k + norm.eps);
      }
      for (let c = 0; c < k; c++) {
        xn[c] = norm === null ? x[row * k + c] : roundTo(nw[c] * roundTo(x[row * k + c] * inv, dt), dt);
      }
      let col = 0;
      for (let q = 0; q < 3; q++) {
        const e = (q * m + row) * w;
        const rank = table[e], ao = table[e + 1], bo = table[e + 2], sc = table[e + 3];
        for (let j = 0; j < rank; j++) {
          let acc = 0;
          for (let c = 0; c < k; c++) acc += xn[c] * as[q][ao + j * k + c];
          t[j] = acc;
        }
        for (let o = 0; o < parts[q]; o++, col++) {
          let acc = 0;
          for (let j = 0; j < rank; j++) acc += t[j] * bs[q][bo + o * rank + j];
          z[col] = roundTo(y0[row * total + col] + sc * acc, dt);
        }
      }
      for (let o = 0; o < nOut; o++) {
        const g = z[o];
        y[row * nOut + o] = glu ? roundTo(g / (1 + Math.exp(-g)), dt) * z[nOut + o] : z[o];
      }
    }
    return [y];
  },
};
