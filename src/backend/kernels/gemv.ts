/**
 * `gemv`: y[m, n] = x[m, k] · w[n, k]ᵀ for 1 to 8 rows (wgsl/gemv.wgsl), optionally plus a residual
 * res[m, n] (the add after o_proj or down_proj, fused): a linear layer during decoding, where each step
 * multiplies one token per row by every weight, so the product runs at the pace of reading the weight
 * once. The rows are a template constant (one pipeline per row count); the weight is read as vec4 when k
 * is a multiple of 4, by as many invocations per column as keep each one's loads few ({@link gemvLayout}).
 * @module
 */
import { type DType, hostArray } from "../../core/dtype.ts";
import { roundToF16 } from "../../core/half.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of {@link GEMV}. */
export interface GemvArgs {
  /** Rows of x, 1 to {@link GEMV_MAX_ROWS}. */
  m: number;
  /** Output features (rows of w). */
  n: number;
  /** Input features. */
  k: number;
  /** Whether y = x wᵀ + res (res is the third input); otherwise the third input is bound but not read. */
  residual?: boolean;
  /**
   * A LoRA term scale · t Bᵀ added to the product: t [m, r] (the fourth input, x Aᵀ) and B [n, r] (the
   * fifth); without it those inputs are bound but not read.
   */
  lora?: { r: number; scale: number } | null;
}

/** The most rows one GEMV takes; more rows are a GEMM's job. */
export const GEMV_MAX_ROWS = 8;

/** Rounds to a storage type, as a kernel's store does. */
export const roundTo = (v: number, dtype: DType): number =>
  dtype === "f16" ? roundToF16(v) : dtype === "f32" ? Math.fround(v) : v;

/** Invocations of one GEMV workgroup. */
const GEMV_WG = 256;

/**
 * How a GEMV-shaped kernel spreads a [n, k] weight: `lanes` invocations per output column (a power of two,
 * 32 to 256) so that each reads about two of the row's (vec4) elements, `cols` = 256 / lanes columns per
 * workgroup, `groups` workgroups. Decoding is latency-bound: an invocation that strides a 2048-wide row
 * 32 lanes at a time issues 16 loads one after another, while the whole weight fits in the loads a large
 * GPU keeps in flight at once (on the H200 a 2048 x 2048 GEMV with 32 lanes per column ran at ~0.6 TB/s,
 * and a 512 x 2048 one on 64 workgroups at 0.13 TB/s; bench/NOTES.md).
 */
export function gemvLayout(
  n: number,
  k: number,
): { lanes: number; cols: number; groups: number; wg: number } {
  const kv = k % 4 === 0 ? k / 4 : k;
  let lanes = 32;
  while (lanes < GEMV_WG && lanes * 2 < kv) lanes *= 2;
  const cols = GEMV_WG / lanes;
  return { lanes, cols, groups: Math.ceil(n / cols), wg: GEMV_WG };
}

/** The template constants of a GEMV layout. */
export function gemvSpec(n: number, k: number): { WG: number; LANES: number } {
  const l = gemvLayout(n, k);
  return { WG: l.wg, LANES: l.lanes };
}

/** Checks the row count and sizes shared by the GEMV-shaped kernels. */
export function checkGemvShape(op: string, m: number, n: number, k: number): void {
  if (!(Number.isInteger(m) && m >= 1 && m <= GEMV_MAX_ROWS)) {
    throw new ShapeError(`${op}: takes 1 to ${GEMV_MAX_ROWS} rows, got ${m}`);
  }
  if (!(Number.isInteger(n) && Number.isInteger(k) && n >= 1 && k >= 1)) {
    throw new ShapeError(`${op}: sizes must be positive integers, got n ${n}, k ${k}`);
  }
}

/** The GEMV kernel: inputs x [m, k], w [n, k] and res ([m, n] when `residual`), output y [m, n]. */
export const GEMV: KernelRecord<GemvArgs> = {
  name: "gemv",
  template: "gemv",
  bindings: [
    { name: "x", access: "read" },
    { name: "w", access: "read" },
    { name: "res", access: "read" },
    { name: "t", access: "read" },
    { name: "lb", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [
    { name: "n", type: "u32" },
    { name: "k", type: "u32" },
    { name: "r", type: "u32" },
    { name: "scale", type: "f32" },
  ],
  check(inputs, { m, n, k, residual, lora }) {
    if (inputs.length !== 5) {
      throw new ShapeError(`gemv: takes x, w, res, t and B, got ${inputs.length} inputs`);
    }
    const [x, w, r, t, lb] = inputs;
    checkGemvShape("gemv", m, n, k);
    if (x.dtype !== w.dtype) throw new DTypeError(`gemv: x is ${x.dtype}, w is ${w.dtype}`);
    expectSize(x.size, m * k, "gemv", `x [${m}, ${k}]`);
    expectSize(w.size, n * k, "gemv", `w [${n}, ${k}]`);
    if (residual === true) {
      if (r.dtype !== x.dtype) throw new DTypeError(`gemv: res is ${r.dtype}, x is ${x.dtype}`);
      expectSize(r.size, m * n, "gemv", `res [${m}, ${n}]`);
    }
    if (lora !== undefined && lora !== null) {
      if (!(Number.isInteger(lora.r) && lora.r >= 1)) throw new ShapeError(`gemv: LoRA rank ${lora.r}`);
      if (t.dtype !== x.dtype || lb.dtype !== x.dtype) {
        throw new DTypeError(`gemv: LoRA t ${t.dtype} and B ${lb.dtype} must be ${x.dtype}`);
      }
      expectSize(t.size, m * lora.r, "gemv", `LoRA t [${m}, ${lora.r}]`);
      expectSize(lb.size, n * lora.r, "gemv", `LoRA B [${n}, ${lora.r}]`);
    }
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.m * a.n, dtype: x.dtype, what: `gemv: output [${a.m}, ${a.n}] (${x.dtype})` }],
  specialise: ([x], a) => ({
    T: x.dtype,
    M: a.m,
    VEC: a.k % 4 === 0,
    RES: a.residual === true,
    LORA: a.lora !== undefined && a.lora !== null,
    ...gemvSpec(a.n, a.k),
  }),
  uniforms: (a) => ({ n: a.n, k: a.k, r: a.lora?.r ?? 0, scale: a.lora?.scale ?? 0 }),
  geometry: (a) => ({ rows: gemvLayout(a.n, a.k).groups }),
  reference([x, w, r, t, lb], { m, n, k, residual, lora }, [y]) {
    const out = hostArray(y.dtype, m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let c = 0; c < k; c++) s += x[i * k + c] * w[j * k + c];
        if (lora !== undefined && lora !== null) {
          for (let c = 0; c < lora.r; c++) s += lora.scale * t[i * lora.r + c] * lb[j * lora.r + c];
        }
        out[i * n + j] = residual === true ? roundTo(s, y.dtype) + r[i * n + j] : s;
      }
    }
    return [out];
  },
};
