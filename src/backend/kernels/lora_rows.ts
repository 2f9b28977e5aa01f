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
    if (!(Number.isInteger(m) && m >= 0 && Number.isInteger(k) && k >= 1 && Number.isInteger(n) && n >= 1)) {
      throw new ShapeError(`${op}: sizes must be m >= 0, k >= 1, n >= 1, got m ${m}, k ${k}, n ${n}`);
    }
    if (x.dtype !== y0.dtype) {
      throw new DTypeError(`${op}: x is ${x.dtype} but the base output y0 is ${y0.dtype}`);
    }
    if (a.dtype !== b.dtype) throw new DTypeError(`${op}: the packed A is ${a.dtype} but B is ${b.dtype}`);
    expectSize(x.size, m * k, op, `x [${m}, ${k}]`);
    expectSize(y0.size, m * n, op, `y0 [${m}, ${n}]`);
    expectSize(rowSlots.length, m, op, "the row slots");
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
      if (!Number.isFinite(s.scale)) {
        throw new ShapeError(`${op}: slot ${i}'s scale ${s.scale} is not finite`);
      }
    });
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
