/**
 * `gemvNorm`: an RMSNorm fused into the one to three GEMVs that read its output, for 1 to 8 rows
 * (wgsl/gemv_norm.wgsl). With xn = T(nw · T(x · (mean(x²) + eps)^-½)) per row of x [m, k] (what
 * `addRmsNorm` stores), y [m, n0 + n1 + n2] = [xn w0ᵀ | xn w1ᵀ | xn w2ᵀ], plus each part's bias when
 * `bias` is set. A decoding step runs a layer's input norm and its q, k and v projections as one dispatch
 * this way (one part for a fused qkv weight; one part for the final norm and the LM head).
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";
import { checkGemvShape, gemvLayout, gemvSpec, roundTo } from "./gemv.ts";

/** Arguments of {@link GEMV_NORM}. */
export interface GemvNormArgs {
  /** Rows of x, 1 to 8. */
  m: number;
  /** Output features of each part: [n0, n1, n2], not all 0; a part of 0 columns is absent. */
  parts: readonly [number, number, number];
  /** Input features (the norm's width). */
  k: number;
  /** The norm's epsilon. */
  eps: number;
  /** Whether x is normalised (default true); false: y = [x w0ᵀ | ...], nw bound but not read. */
  norm?: boolean;
  /** Whether the inputs e0, e1, e2 are the parts' biases. */
  bias: boolean;
  /**
   * Or whether e0, e1, e2 are the parts' LoRA B weights [n_q, r_q] and the ninth input t [m, r0 + r1 + r2]
   * holds x̂ times each part's A side by side: the parts' terms s_q · t_q B_qᵀ join the products. Not
   * with `bias`. Without either, e0-e2 and t are bound but not read.
   */
  lora?: { ranks: readonly [number, number, number]; scales: readonly [number, number, number] } | null;
}

/**
 * The kernel: inputs x [m, k], nw [k] (the norm's scale), w0 [n0, k], w1 [n1, k], w2 [n2, k], e0, e1,
 * e2 (biases [n_q] or LoRA B [n_q, r_q]) and t (LoRA only); output y [m, n0 + n1 + n2]. An absent part's
 * weight, and unread operands, may be any storage of x's dtype (the callers bind w0 again).
 */
export const GEMV_NORM: KernelRecord<GemvNormArgs> = {
  name: "gemv_norm",
  template: "gemv_norm",
  bindings: [
    { name: "x", access: "read" },
    { name: "nw", access: "read" },
    { name: "w0", access: "read" },
    { name: "w1", access: "read" },
    { name: "w2", access: "read" },
    { name: "e0", access: "read" },
    { name: "e1", access: "read" },
    { name: "e2", access: "read" },
    { name: "t", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [
    { name: "n0", type: "u32" },
    { name: "n1", type: "u32" },
    { name: "n2", type: "u32" },
    { name: "k", type: "u32" },
    { name: "eps", type: "f32" },
    { name: "r0", type: "u32" },
    { name: "r1", type: "u32" },
    { name: "r2", type: "u32" },
    { name: "s0", type: "f32" },
    { name: "s1", type: "f32" },
    { name: "s2", type: "f32" },
  ],
  check(inputs, { m, parts, k, eps, bias, lora, norm }) {
    const op = "gemvNorm";
    if (inputs.length !== 9) throw new ShapeError(`${op}: takes 9 inputs, got ${inputs.length}`);
    if (bias && lora) throw new ShapeError(`${op}: biases and LoRA terms share their inputs; not both`);
    if (!(parts.length === 3 && parts.every((n) => Number.isInteger(n) && n >= 0))) {
      throw new ShapeError(`${op}: parts must be three column counts, got [${parts}]`);
    }
    checkGemvShape(op, m, parts[0] + parts[1] + parts[2], k);
    if (!(eps >= 0)) throw new ShapeError(`${op}: eps must be non-negative, got ${eps}`);
    const [x, nw] = inputs;
    for (const t of inputs) {
      if (t.dtype !== x.dtype) throw new DTypeError(`${op}: every input must be ${x.dtype}, got ${t.dtype}`);
    }
    expectSize(x.size, m * k, op, `x [${m}, ${k}]`);
    if (norm !== false) expectSize(nw.size, k, op, `norm weight [${k}]`);
    parts.forEach((n, i) => {
      if (n === 0) return;
      expectSize(inputs[2 + i].size, n * k, op, `w${i} [${n}, ${k}]`);
      if (bias) expectSize(inputs[5 + i].size, n, op, `b${i} [${n}]`);
      if (lora && lora.ranks[i] > 0) {
        expectSize(inputs[5 + i].size, n * lora.ranks[i], op, `LoRA B${i} [${n}, ${lora.ranks[i]}]`);
      }
    });
    if (lora) {
      if (!lora.ranks.every((r, i) => Number.isInteger(r) && r >= 0 && (r === 0 || parts[i] > 0))) {
        throw new ShapeError(`${op}: LoRA ranks [${lora.ranks}] must be non-negative, 0 for absent parts`);
      }
      const rt = lora.ranks[0] + lora.ranks[1] + lora.ranks[2];
      expectSize(inputs[8].size, m * rt, op, `LoRA t [${m}, ${rt}]`);
    }
  },
  outputs: ([x], a) => {
    const n = a.parts[0] + a.parts[1] + a.parts[2];
    return [{ size: a.m * n, dtype: x.dtype, what: `gemvNorm: output [${a.m}, ${n}] (${x.dtype})` }];
  },
  specialise: ([x], a) => ({
    T: x.dtype,
    M: a.m,
    VEC: a.k % 4 === 0,
    BIAS: a.bias,
    NORM: a.norm !== false,
    LORA: a.lora !== undefined && a.lora !== null,
    ...gemvSpec(a.parts[0] + a.parts[1] + a.parts[2], a.k),
  }),
  uniforms: (a) => {
    const r = a.lora?.ranks ?? [0, 0, 0], sc = a.lora?.scales ?? [0, 0, 0];
    return {
      n0: a.parts[0],
      n1: a.parts[1],
      n2: a.parts[2],
      k: a.k,
      eps: a.eps,
      r0: r[0],
      r1: r[1],
      r2: r[2],
      s0: sc[0],
      s1: sc[1],
      s2: sc[2],
    };
  },
  geometry: (a) => ({ rows: gemvLayout(a.parts[0] + a.parts[1] + a.parts[2], a.k).groups }),
  reference(inputs, { m, parts, k, eps, bias, lora, norm }, [spec]) {
    const [x, nw] = inputs, dt = spec.dtype;
    const n = parts[0] + parts[1] + parts[2];
    const y = hostArray(dt, m * n);
    const xn = new Float64Array(k);
    for (let i = 0; i < m; i++) {
      let ss = 0;
      for (let c = 0; c < k; c++) ss += x[i * k + c] * x[i * k + c];
      const inv = 1 / Math.sqrt(ss / k + eps);
      for (let c = 0; c < k; c++) {
        xn[c] = norm === false ? x[i * k + c] : roundTo(nw[c] * roundTo(x[i * k + c] * inv, dt), dt);
      }
      let col = 0;
      const t = inputs[8], rt = lora ? lora.ranks[0] + lora.ranks[1] + lora.ranks[2] : 0;
      parts.forEach((np, q) => {
        const w = inputs[2 + q], b = inputs[5 + q];
        const rq = lora?.ranks[q] ?? 0, ro = q === 0 ? 0 : q === 1 ? lora?.ranks[0] ?? 0 : rt - rq;
        for (let j = 0; j < np; j++, col++) {
          let s = 0;
          for (let c = 0; c < k; c++) s += xn[c] * w[j * k + c];
          for (let c = 0; c < rq; c++) s += lora!.scales[q] * t[i * rt + ro + c] * b[j * rq + c];
          y[i * n + col] = bias ? roundTo(s, dt) + b[j] : s;
        }
      });
    }
    return [y];
  },
};
