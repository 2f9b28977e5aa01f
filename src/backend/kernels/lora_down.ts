/**
 * `loraDown`: a product down to a LoRA rank, out[m, r] = drop(X)[m, k] · Q, in one pass over X with no
 * k slices to add up afterwards (wgsl/lora_down.wgsl). The fused LoRA linear has two of them: t =
 * drop_pre(x) · Aᵀ (Q = A, stored [r, k]) and g = drop_post(dy) · B (Q = B, stored [k, r]). As GEMMs
 * their r-wide outputs leave a tile mostly empty, and enough workgroups to fill a GPU needed k split into
 * slices plus a reduce (bench/NOTES.md, fourth session): here a workgroup takes whole rows, its invocations
 * spread along k with several loads in flight each, and sums the row across its lanes at the end.
 *
 * The output is f32 whatever X's dtype (the fused linear's intermediates are f32 scratch).
 * @module
 */
import type { DType } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import { ConfigError, DTypeError, ShapeError } from "../../core/errors.ts";
import { DROPOUT_PARAMS, dropoutFactor, dropoutParams } from "./dropout_mask.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** How Q is stored: "rk" is [r, k] row-major (lora_A), "kr" is [k, r] row-major (lora_B). */
export type LoraDownLayout = "rk" | "kr";

/** The largest rank the kernel is compiled for (its per-invocation sums are registers). */
export const LORA_DOWN_MAX_RANK = 64;

/** Invocations along k per row: one 32-wide subgroup on NVIDIA GPUs, so a row's loads are one warp's. */
export const LORA_DOWN_LANES = 32;

/** Rows per workgroup (of the backend's 256 invocations). */
export const LORA_DOWN_ROWS = 8;

/** Arguments of {@link LORA_DOWN}. */
export interface LoraDownArgs {
  m: number;
  k: number;
  r: number;
  layout: LoraDownLayout;
  /** Dropout on X, keyed by X's element index (as the fused linear's CPU reference does); null: none. */
  dropout: { p: number; seed: number } | null;
}

const FLOAT: readonly DType[] = ["f32", "f16"];

/** The down product: inputs X [m, k] and Q ([r, k] or [k, r]); output [m, r] f32. */
export const LORA_DOWN: KernelRecord<LoraDownArgs> = {
  name: "lora_down",
  template: "lora_down",
  bindings: [
    { name: "x", access: "read" },
    { name: "q", access: "read" },
    { name: "out", access: "write" },
  ],
  params: [
    { name: "m", type: "u32" },
    { name: "k", type: "u32" },
    ...DROPOUT_PARAMS,
  ],
  check([x, q], { m, k, r, layout }) {
    const op = "loraDown";
    for (const [name, v] of [["m", m], ["k", k], ["r", r]] as const) {
      if (!Number.isInteger(v) || v < 0) {
        throw new ShapeError(`${op}: ${name} must be a whole number, got ${v}`);
      }
    }
    if (r < 1 || r > LORA_DOWN_MAX_RANK) {
      throw new ConfigError(`${op}: rank ${r} is outside 1..${LORA_DOWN_MAX_RANK}`);
    }
    if (layout !== "rk" && layout !== "kr") {
      throw new ConfigError(`${op}: layout must be "rk" or "kr", got ${layout}`);
    }
    for (const [name, s] of [["X", x], ["Q", q]] as const) {
      if (!FLOAT.includes(s.dtype)) throw new DTypeError(`${op}: ${name} must be f32 or f16, got ${s.dtype}`);
    }
    expectSize(x.size, m * k, op, `X [${m}, ${k}]`);
    expectSize(q.size, r * k, op, layout === "rk" ? `Q [${r}, ${k}]` : `Q [${k}, ${r}]`);
  },
  outputs: (
    _inputs,
    a,
  ) => [{ size: a.m * a.r, dtype: "f32", what: `loraDown: output [${a.m}, ${a.r}] (f32)` }],
  specialise: ([x, q], a) => ({
    X_T: x.dtype,
    Q_T: q.dtype,
    R: a.r,
    KR: a.layout === "kr",
    // vec4 loads of X (and of an [r, k] Q) need k % 4 == 0; of a [k, r] Q's rows, r % 4 == 0.
    VEC_X: a.k % 4 === 0,
    VEC_Q: a.layout === "kr" ? a.r % 4 === 0 : a.k % 4 === 0,
    MASK: a.dropout !== null && a.dropout.p > 0,
    LANES: LORA_DOWN_LANES,
    ROWS: LORA_DOWN_ROWS,
    // Steps of LANES vec4s along k whose loads are issued before their sums (loads in flight per lane);
    // fewer at high ranks, where each step's sums are already many (and the unrolled code large).
    U: a.r <= 16 ? 4 : a.r <= 32 ? 2 : 1,
    R4: Math.ceil(a.r / 4),
    // Ranks summed across lanes per round of the workgroup memory (WG · CH f32: 16 KiB at most).
    CH: Math.min(16, a.r),
    NCH: Math.ceil(a.r / Math.min(16, a.r)),
  }),
  uniforms: (a) => ({
    m: a.m,
    k: a.k,
    ...dropoutParams(a.dropout !== null && a.dropout.p > 0 ? a.dropout : null),
  }),
  geometry: (a) => ({ rows: Math.ceil(a.m / LORA_DOWN_ROWS) }),
  reference([x, q], { m, k, r, layout, dropout }, [out]) {
    const y = hostArray(out.dtype, m * r);
    const d = dropout !== null && dropout.p > 0 ? dropoutParams(dropout) : null;
    const xv = new Float64Array(k);
    for (let i = 0; i < m; i++) {
      for (let c = 0; c < k; c++) {
        const at = i * k + c;
        xv[c] = d === null ? x[at] : x[at] * dropoutFactor(d.seed, at, d.threshold, d.keep);
      }
      for (let j = 0; j < r; j++) {
        let acc = 0;
        for (let c = 0; c < k; c++) acc += xv[c] * (layout === "rk" ? q[j * k + c] : q[c * r + j]);
        y[i * r + j] = acc;
      }
    }
    return [y];
  },
};
