/**
 * SwiGLU's product silu(gate) · up as one forward dispatch and one backward dispatch
 * (wgsl/silu_mul*.wgsl), in place of the composition's two forward and five backward element-wise ops.
 * Intermediates are rounded to the storage type where the composition stores them, so f16 results match
 * it too (for f32 those roundings are no-ops).
 * @module
 */
import { type DType, hostArray } from "../../core/dtype.ts";
import { roundToF16 } from "../../core/half.ts";
import { DTypeError } from "../../core/errors.ts";
import { UNARY_FUNCTIONS } from "./unary.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of the SiLU × up kernels: the element count of gate, up (and the gradient). */
export interface SiluMulArgs {
  n: number;
}

const round = (v: number, dtype: DType) =>
  dtype === "f16" ? roundToF16(v) : dtype === "f32" ? Math.fround(v) : v;

function check(op: string, named: [string, { size: number; dtype: DType }][], n: number): void {
  const dt = named[0][1].dtype;
  if (named.some(([, s]) => s.dtype !== dt)) {
    throw new DTypeError(`${op}: ${named.map(([w, s]) => `${w} ${s.dtype}`).join(", ")} must agree`);
  }
  for (const [what, s] of named) expectSize(s.size, n, op, what);
}

const { silu, siluGrad } = UNARY_FUNCTIONS;

/** The forward: inputs gate and up (n elements each); output y = silu(gate) · up. */
export const SILU_MUL: KernelRecord<SiluMulArgs> = {
  name: "silu_mul",
  template: "silu_mul",
  bindings: [{ name: "gate", access: "read" }, { name: "up", access: "read" }, {
    name: "y",
    access: "write",
  }],
  params: [{ name: "n", type: "u32" }],
  check: ([gate, up], a) => check("siluMul", [["gate", gate], ["up", up]], a.n),
  outputs: (
    [gate],
    a,
  ) => [{ size: a.n, dtype: gate.dtype, what: `siluMul: output of ${a.n} elements (${gate.dtype})` }],
  specialise: ([gate]) => ({ T: gate.dtype }),
  uniforms: (a) => ({ n: a.n }),
  geometry: (a) => ({ elements: a.n }),
  reference([gate, up], { n }, [spec]) {
    const y = hostArray(spec.dtype, n);
    for (let i = 0; i < n; i++) y[i] = round(silu(gate[i]), spec.dtype) * up[i];
    return [y];
  },
};

/** The backward: inputs gate, up and the output gradient g; outputs dgate and dup. */
export const SILU_MUL_BACKWARD: KernelRecord<SiluMulArgs> = {
  name: "silu_mul_backward",
  template: "silu_mul_backward",
  bindings: [
    { name: "gate", access: "read" },
    { name: "up", access: "read" },
    { name: "g", access: "read" },
    { name: "dgate", access: "write" },
    { name: "dup", access: "write" },
  ],
  params: [{ name: "n", type: "u32" }],
  check: ([gate, up, g], a) => check("siluMul backward", [["gate", gate], ["up", up], ["gradient", g]], a.n),
  outputs: ([gate], a) =>
    ["dgate", "dup"].map((what) => ({
      size: a.n,
      dtype: gate.dtype,
      what: `siluMul backward: ${what} of ${a.n} elements (${gate.dtype})`,
    })),
  specialise: ([gate]) => ({ T: gate.dtype }),
  uniforms: (a) => ({ n: a.n }),
  geometry: (a) => ({ elements: a.n }),
  reference([gate, up, g], { n }, [spec]) {
    const dt = spec.dtype, dg = hostArray(dt, n), du = hostArray(dt, n);
    for (let i = 0; i < n; i++) {
      dg[i] = round(g[i] * up[i], dt) * round(siluGrad(gate[i]), dt);
      du[i] = g[i] * round(silu(gate[i]), dt);
    }
    return [dg, du];
  },
};
