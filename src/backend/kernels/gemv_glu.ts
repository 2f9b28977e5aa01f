/**
 * `gemvGlu`: y[m, n] = silu(x · gᵀ) · (x · uᵀ) for 1 to 8 rows of x [m, k] (wgsl/gemv_glu.wgsl): the
 * gate and up projections of a SwiGLU block with the activation and product, one dispatch where
 * decoding would otherwise run two GEMVs and two element-wise ops. With `norm`, the RMSNorm before the
 * block is fused in too (x is then the residual stream, normalised on the fly as `gemvNorm` does). The
 * up weight's rows may start `upOffset` elements into its storage, so a fused gate_up weight (Phi-3's) is
 * bound as both. Gate and up are rounded to the storage type before the activation, and silu's result
 * before the product, as the separate ops store them.
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";
import { checkGemvShape, gemvLayout, gemvSpec, roundTo } from "./gemv.ts";

/** Arguments of {@link GEMV_GLU}. */
export interface GemvGluArgs {
  m: number;
  n: number;
  k: number;
  /** The fused RMSNorm's epsilon (its scale is the second input); null: no norm, the second input unread. */
  norm?: { eps: number } | null;
  /** Where u's first row starts in its storage, in elements (default 0); a multiple of k. */
  upOffset?: number;
  /**
   * LoRA terms of gate and up: t [m, rg + ru] (x̂ A_gateᵀ then x̂ A_upᵀ, the fifth input), B_gate [n, rg]
   * and B_up [n, ru] (sixth and seventh), scaled by sg and su; without it those inputs are not read.
   */
  lora?: { rg: number; ru: number; sg: number; su: number } | null;
}

/** The kernel: inputs x [m, k], nw [k] (norm scale, or any storage), gate g [n, k], up u; output y [m, n]. */
export const GEMV_GLU: KernelRecord<GemvGluArgs> = {
  name: "gemv_glu",
  template: "gemv_glu",
  bindings: [
    { name: "x", access: "read" },
    { name: "nw", access: "read" },
    { name: "g", access: "read" },
    { name: "u", access: "read" },
    { name: "t", access: "read" },
    { name: "bg", access: "read" },
    { name: "bu", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [
    { name: "n", type: "u32" },
    { name: "k", type: "u32" },
    { name: "u_off", type: "u32" },
    { name: "eps", type: "f32" },
    { name: "rg", type: "u32" },
    { name: "ru", type: "u32" },
    { name: "sg", type: "f32" },
    { name: "su", type: "f32" },
  ],
  check(inputs, { m, n, k, norm, upOffset, lora }) {
    if (inputs.length !== 7) {
      throw new ShapeError(`gemvGlu: takes x, nw, gate, up, t, B_gate, B_up; got ${inputs.length}`);
    }
    const [x, nw, g, u, t, bg, bu] = inputs;
    if (lora !== undefined && lora !== null) {
      if (!(Number.isInteger(lora.rg) && Number.isInteger(lora.ru) && lora.rg >= 0 && lora.ru >= 0)) {
        throw new ShapeError(`gemvGlu: LoRA ranks ${lora.rg}, ${lora.ru} must be non-negative integers`);
      }
      for (const e of [t, bg, bu]) {
        if (e.dtype !== x.dtype) {
          throw new DTypeError(`gemvGlu: LoRA operands must be ${x.dtype}, got ${e.dtype}`);
        }
      }
      expectSize(t.size, m * (lora.rg + lora.ru), "gemvGlu", `LoRA t [${m}, ${lora.rg + lora.ru}]`);
      if (lora.rg > 0) expectSize(bg.size, n * lora.rg, "gemvGlu", `LoRA B_gate [${n}, ${lora.rg}]`);
      if (lora.ru > 0) expectSize(bu.size, n * lora.ru, "gemvGlu", `LoRA B_up [${n}, ${lora.ru}]`);
    }
    checkGemvShape("gemvGlu", m, n, k);
    if (g.dtype !== x.dtype || u.dtype !== x.dtype) {
      throw new DTypeError(`gemvGlu: x ${x.dtype}, gate ${g.dtype}, up ${u.dtype} must agree`);
    }
    const off = upOffset ?? 0;
    if (!(Number.isInteger(off) && off >= 0 && off % k === 0)) {
      throw new ShapeError(`gemvGlu: upOffset must be a non-negative multiple of k ${k}, got ${upOffset}`);
    }
    expectSize(x.size, m * k, "gemvGlu", `x [${m}, ${k}]`);
    // One storage as both (a fused gate_up weight): the gate rows, then the up rows from upOffset.
    if (g !== u) expectSize(g.size, n * k, "gemvGlu", `gate [${n}, ${k}]`);
    expectSize(u.size, off + n * k, "gemvGlu", `up [${n}, ${k}] from element ${off}`);
    if (norm !== undefined && norm !== null) {
      if (nw.dtype !== x.dtype) throw new DTypeError(`gemvGlu: norm weight ${nw.dtype}, x ${x.dtype}`);
      expectSize(nw.size, k, "gemvGlu", `norm weight [${k}]`);
    }
  },
  outputs: (
    [x],
    a,
  ) => [{ size: a.m * a.n, dtype: x.dtype, what: `gemvGlu: output [${a.m}, ${a.n}] (${x.dtype})` }],
  specialise: ([x], a) => ({
    T: x.dtype,
    M: a.m,
    VEC: a.k % 4 === 0,
    NORM: a.norm !== undefined && a.norm !== null,
    LORA: a.lora !== undefined && a.lora !== null,
    ...gemvSpec(a.n, a.k),
  }),
  uniforms: (a) => ({
    n: a.n,
    k: a.k,
    u_off: a.upOffset ?? 0,
    eps: a.norm?.eps ?? 0,
    rg: a.lora?.rg ?? 0,
    ru: a.lora?.ru ?? 0,
    sg: a.lora?.sg ?? 0,
    su: a.lora?.su ?? 0,
  }),
  geometry: (a) => ({ rows: gemvLayout(a.n, a.k).groups }),
  reference([x, nw, g, u, t, bg, bu], { m, n, k, norm, upOffset, lora }, [spec]) {
    const dt = spec.dtype, off = upOffset ?? 0;
    const y = hostArray(dt, m * n);
    const xr = new Float64Array(k);
    for (let i = 0; i < m; i++) {
      if (norm !== undefined && norm !== null) {
        let ss = 0;
        for (let c = 0; c < k; c++) ss += x[i * k + c] * x[i * k + c];
        const inv = 1 / Math.sqrt(ss / k + norm.eps);
        for (let c = 0; c < k; c++) xr[c] = roundTo(nw[c] * roundTo(x[i * k + c] * inv, dt), dt);
      } else {
        for (let c = 0; c < k; c++) xr[c] = x[i * k + c];
      }
      for (let j = 0; j < n; j++) {
        let sg = 0, su = 0;
        for (let c = 0; c < k; c++) {
          sg += xr[c] * g[j * k + c];
          su += xr[c] * u[off + j * k + c];
        }
        if (lora !== undefined && lora !== null) {
          const rt = lora.rg + lora.ru;
          for (let c = 0; c < lora.rg; c++) sg += lora.sg * t[i * rt + c] * bg[j * lora.rg + c];
          for (let c = 0; c < lora.ru; c++) su += lora.su * t[i * rt + lora.rg + c] * bu[j * lora.ru + c];
        }
        const gs = roundTo(sg, dt);
        y[i * n + j] = roundTo(gs / (1 + Math.exp(-gs)), dt) * roundTo(su, dt);
      }
    }
    return [y];
  },
};
