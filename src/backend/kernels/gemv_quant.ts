/**
 * `gemvQuant`: the decoding GEMV of a quantized Linear (wgsl/gemv_quant.wgsl): y[m, n] = x[m, k] · Wᵀ
 * (+ res[m, n]) for 1 to 8 rows, with W [n, k] held as NF4 or int8 codes and per-block scales (the packed
 * f32 storage of src/backend/kernels/quantize.ts), decoded on the fly as one f32 product code · scale (the
 * value `dequantize` stores in f32), so a step reads the 4- or 8-bit codes instead of a dequantized copy.
 * Needs k and the block to be multiples of the codes per word (8 for NF4, 4 for int8).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";
import { checkGemvShape, gemvLayout, roundTo } from "./gemv.ts";
import { dequantizeValues, type QuantLayout } from "./quantize.ts";

/** Arguments of {@link GEMV_QUANT}. */
export interface GemvQuantArgs {
  m: number;
  n: number;
  k: number;
  /** The packed weight's layout (of n · k elements). */
  layout: QuantLayout;
  /** Whether y = x Wᵀ + res (the third input); otherwise the third input is bound but not read. */
  residual?: boolean;
}

/** Codes per 32-bit word of a scheme. */
const perWord = (l: QuantLayout) => (l.scheme === "nf4" ? 8 : 4);

/** Whether {@link GEMV_QUANT} takes a weight of this layout and width k. */
export function gemvQuantFits(layout: QuantLayout, k: number): boolean {
  return k % perWord(layout) === 0 && layout.block % perWord(layout) === 0;
}

/** The kernel: inputs x [m, k], packed (f32 words), res [m, n] (or any storage); output y [m, n]. */
export const GEMV_QUANT: KernelRecord<GemvQuantArgs> = {
  name: "gemv_quant",
  template: "gemv_quant",
  includes: ["quant_codes"],
  bindings: [
    { name: "x", access: "read" },
    { name: "packed", access: "read" },
    { name: "res", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [
    { name: "n", type: "u32" },
    { name: "k", type: "u32" },
    { name: "block", type: "u32" },
    { name: "code_words", type: "u32" },
  ],
  check([x, packed, r], { m, n, k, layout, residual }) {
    const op = "gemvQuant";
    checkGemvShape(op, m, n, k);
    if (layout.size !== n * k) {
      throw new ShapeError(`${op}: layout of ${layout.size} elements, weight [${n}, ${k}]`);
    }
    if (!gemvQuantFits(layout, k)) {
      throw new ShapeError(`${op}: k ${k} and block ${layout.block} must be multiples of ${perWord(layout)}`);
    }
    if (packed.dtype !== "f32") {
      throw new DTypeError(`${op}: packed words are f32 storage, got ${packed.dtype}`);
    }
    expectSize(packed.size, layout.words, op, `packed weight`);
    expectSize(x.size, m * k, op, `x [${m}, ${k}]`);
    if (residual === true) {
      if (r.dtype !== x.dtype) throw new DTypeError(`${op}: res is ${r.dtype}, x is ${x.dtype}`);
      expectSize(r.size, m * n, op, `res [${m}, ${n}]`);
    }
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.m * a.n, dtype: x.dtype, what: `gemvQuant: output [${a.m}, ${a.n}] (${x.dtype})` }],
  // One word per invocation and step: the layout of a GEMV over k / 8 (or k / 4) elements.
  specialise: ([x], a) => ({
    T: x.dtype,
    M: a.m,
    QUANT: a.layout.scheme,
    RES: a.residual === true,
    WG: gemvLayout(a.n, 4 * (a.k / perWord(a.layout))).wg,
    LANES: gemvLayout(a.n, 4 * (a.k / perWord(a.layout))).lanes,
  }),
  uniforms: (a) => ({ n: a.n, k: a.k, block: a.layout.block, code_words: a.layout.codeWords }),
  geometry: (a) => ({ rows: gemvLayout(a.n, 4 * (a.k / perWord(a.layout))).groups }),
  reference([x, packed, r], { m, n, k, layout, residual }, [y]) {
    const w = dequantizeValues(packed, layout);
    const out = hostArray(y.dtype, m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let c = 0; c < k; c++) s += x[i * k + c] * w[j * k + c];
        out[i * n + j] = residual === true ? roundTo(s, y.dtype) + r[i * n + j] : s;
      }
    }
    return [out];
  },
};
