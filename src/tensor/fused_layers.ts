/**
 * Three decoder-layer pieces as fused kernels, each one differentiable op of one forward dispatch and one
 * (RMSNorm with a trained weight: two) backward dispatches that keep nothing but their inputs:
 * `fusedRmsNorm` (src/backend/kernels/rms_norm.ts), `siluMul` (silu_mul.ts) and `rotaryHeads`, the rotary
 * embedding with the split into heads folded in (rope.ts). Their values equal the compositions they
 * replace: the same f32 arithmetic, rounded to the storage type where the composition stores.
 *
 * Beside them, their composed twins `leanRmsNorm`, `leanSiluMul` and `rotaryEmbedding`: the same
 * functions built from the primitive ops, keeping only what their backward needs (x and one 1/rms per
 * row; gate and up; nothing). The tests check the kernels' values and gradients against them.
 * @module
 */
import { RMS_NORM, RMS_NORM_BACKWARD, RMS_NORM_WEIGHT_GRAD } from "../backend/kernels/rms_norm.ts";
import { SILU_MUL, SILU_MUL_BACKWARD } from "../backend/kernels/silu_mul.ts";
import { ROPE, type RopeArgs } from "../backend/kernels/rope.ts";
import { ConfigError, DTypeError, ShapeError } from "../core/errors.ts";
import { isGradEnabled, noGrad } from "./graph.ts";
import { fromStorage, Tensor } from "./tensor.ts";
import { add, deviceMismatch, matmul, mul, rsqrt, scale, silu, square, sub, sum, transpose } from "./ops.ts";

/** Makes `y` (computed with recording off) the output of a node over `inputs`, when one needs a gradient. */
function attach(y: Tensor, op: string, inputs: Tensor[], backward: (g: Tensor) => (Tensor | null)[]): Tensor {
  if (isGradEnabled() && inputs.some((t) => t.requiresGrad)) {
    y.requiresGrad = true;
    y._node = { op, inputs, backward };
  }
  return y;
}

/** Runs `f` with recording off, disposing every tensor in `temps` it pushed, and returns its result. */
function lean(f: (temps: Tensor[]) => Tensor): Tensor {
  const temps: Tensor[] = [];
  try {
    return noGrad(() => f(temps));
  } finally {
    for (const t of temps) t.dispose();
  }
}

/** Throws unless every value is a Tensor on one device with one dtype. */
function checkOperands(op: string, named: [string, unknown][]): Tensor[] {
  for (const [what, v] of named) {
    if (!(v instanceof Tensor)) throw new ShapeError(`${op}: ${what} must be a Tensor`);
  }
  const ts = named.map(([, v]) => v as Tensor);
  if (ts.some((t) => t.device !== ts[0].device)) throw deviceMismatch(op, ts.map((t) => t.device));
  if (ts.some((t) => t.dtype !== ts[0].dtype)) {
    throw new DTypeError(`${op}: ${named.map(([w], i) => `${w} ${ts[i].dtype}`).join(", ")} must agree`);
  }
  return ts;
}

/** Checks RMSNorm's operands; returns the row width n. */
function checkRmsNorm(op: string, x: Tensor, weight: Tensor, eps: number): number {
  if (!(x instanceof Tensor) || !(weight instanceof Tensor)) {
    throw new ShapeError(`${op}: x and weight must be Tensors`);
  }
  if (x.ndim === 0) throw new ShapeError(`${op}: input must have at least one axis, got a scalar`);
  const n = x.shape[x.ndim - 1];
  if (weight.ndim !== 1 || weight.shape[0] !== n) {
    throw new ShapeError(`${op}: weight [${weight.shape}] does not match the last dim of input [${x.shape}]`);
  }
  if (!(eps >= 0)) throw new ConfigError(`${op}: eps must be a non-negative number, got ${eps}`);
  return n;
}

/**
 * RMSNorm over the last axis, T(weight · T(x / √(mean(x²) + eps))) with the statistics in f32 (for f16
 * storage this is transformers' LlamaRMSNorm: normalise in float32, cast back, scale; for f32 and f64 the
 * casts do nothing). One dispatch forward; the backward recomputes 1/rms from x in one dispatch for the
 * input gradient and, when the weight is trained, one more for its gradient. Keeps only x.
 */
export function fusedRmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  const op = "fusedRmsNorm";
  const n = checkRmsNorm(op, x, weight, eps);
  checkOperands(op, [["x", x], ["weight", weight]]);
  const rows = x.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const args = { rows, n, eps };
  const device = x.device, be = device.backend;
  const [ys] = be.run(RMS_NORM, [x.storage(op), weight.storage(op)], args);
  return fromStorage(ys, x.shape, x.dtype, device, {
    op,
    inputs: [x, weight],
    backward: (g) => {
      const [dx, r] = be.run(RMS_NORM_BACKWARD, [x.storage(op), weight.storage(op), g.storage(op)], args);
      let dw: Tensor | null = null;
      try {
        if (weight.requiresGrad) {
          const [dws] = be.run(RMS_NORM_WEIGHT_GRAD, [x.storage(op), g.storage(op), r], args);
          dw = fromStorage(dws, weight.shape, weight.dtype, device);
        }
      } finally {
        be.free(r);
      }
      if (!x.requiresGrad) {
        be.free(dx);
        return [null, dw];
      }
      return [fromStorage(dx, x.shape, x.dtype, device), dw];
    },
  });
}

/**
 * The composed twin of {@link fusedRmsNorm} for f32 and f64 (every step in the storage type): RMSNorm
 * from primitive ops keeping x and the per-row 1/rms for the backward, the reference its kernels are
 * tested against.
 */
export function leanRmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  const op = "leanRmsNorm";
  const n = checkRmsNorm(op, x, weight, eps);
  let inv: Tensor | null = null;
  const y = lean((temps) => {
    const sq = square(x);
    const s = sum(sq, -1, true);
    const m = scale(s, 1 / n);
    // m + eps without a scalar tensor (which would stay alive until the scope ends).
    const me = fromStorage(x.device.backend.affine(m.storage(op), 1, eps), m.shape, m.dtype, m.device);
    temps.push(sq, s, m, me);
    inv = rsqrt(me);
    const xn = mul(x, inv);
    temps.push(xn);
    return mul(xn, weight);
  });
  const r = inv!;
  const out = attach(y, op, [x, weight, r], (g) => {
    // y = x r w with r = (mean(x²) + eps)^−½: dx = r (g w) − x r³ / n · Σ (g w x); dw = Σ_rows g x r.
    const gw = mul(g, weight);
    const dx = x.requiresGrad
      ? sub(mul(gw, r), mul(x, mul(sum(mul(gw, x), -1, true), scale(mul(r, mul(r, r)), 1 / n))))
      : null;
    const dw = weight.requiresGrad
      ? sum(mul(g, mul(x, r)), Array.from({ length: x.ndim - 1 }, (_, i) => i))
      : null;
    return [dx, dw, null];
  });
  if (!out.requiresGrad) r.dispose();
  return out;
}

/** Checks SiLU × up's operands. */
function checkSiluMul(op: string, gate: Tensor, up: Tensor): void {
  if (!(gate instanceof Tensor) || !(up instanceof Tensor)) {
    throw new ShapeError(`${op}: gate and up must be Tensors`);
  }
  if (gate.shape.length !== up.shape.length || gate.shape.some((d, i) => d !== up.shape[i])) {
    throw new ShapeError(`${op}: gate [${gate.shape}] and up [${up.shape}] must have one shape`);
  }
}

/** SiLU(gate) · up (SwiGLU's product) in one dispatch, and both gradients in one; keeps gate and up. */
export function siluMul(gate: Tensor, up: Tensor): Tensor {
  const op = "siluMul";
  checkSiluMul(op, gate, up);
  checkOperands(op, [["gate", gate], ["up", up]]);
  const device = gate.device, be = device.backend, args = { n: gate.size };
  const [ys] = be.run(SILU_MUL, [gate.storage(op), up.storage(op)], args);
  return fromStorage(ys, gate.shape, gate.dtype, device, {
    op,
    inputs: [gate, up],
    backward: (g) => {
      const [dg, du] = be.run(SILU_MUL_BACKWARD, [gate.storage(op), up.storage(op), g.storage(op)], args);
      const out = (s: typeof dg, t: Tensor) => {
        if (t.requiresGrad) return fromStorage(s, t.shape, t.dtype, device);
        be.free(s);
        return null;
      };
      return [out(dg, gate), out(du, up)];
    },
  });
}

/** The composed twin of {@link siluMul}: silu then mul, keeping gate and up only. */
export function leanSiluMul(gate: Tensor, up: Tensor): Tensor {
  const op = "leanSiluMul";
  checkSiluMul(op, gate, up);
  const y = lean((temps) => {
    const s = silu(gate);
    temps.push(s);
    return mul(s, up);
  });
  return attach(y, op, [gate, up], (g) => {
    const be = gate.device.backend;
    const dg = gate.requiresGrad
      ? mul(
        mul(g, up),
        fromStorage(be.unary("siluGrad", gate.storage(op)), gate.shape, gate.dtype, gate.device),
      )
      : null;
    const du = up.requiresGrad ? mul(g, silu(gate)) : null;
    return [dg, du];
  });
}

/**
 * Splits x [batch, seq, heads·dim] (or [batch, seq, heads, dim]) into heads and applies the rotary
 * embedding, → [batch, heads, seq, dim]: t · cos + rotate_half(t) · sin per head, rotate_half(t) =
 * cat(−t₂, t₁) on the head's two halves (transformers' Llama). cos and sin are [seq, dim] or
 * [batch or 1, (1,) seq, dim] (one table per batch row or one for all); no gradient flows to them. One
 * dispatch forward and one backward, each also doing the permute between the two layouts; keeps nothing.
 */
export function rotaryHeads(x: Tensor, cos: Tensor, sin: Tensor, heads: number): Tensor {
  const op = "rotaryHeads";
  checkOperands(op, [["x", x], ["cos", cos], ["sin", sin]]);
  const tables = `cos [${cos.shape}], sin [${sin.shape}]`;
  if (cos.ndim < 2 || sin.shape.length !== cos.shape.length || sin.shape.some((d, i) => d !== cos.shape[i])) {
    throw new ShapeError(`${op}: ${tables} must be one shape [..., seq, dim]`);
  }
  const dim = cos.shape[cos.ndim - 1], seq = cos.shape[cos.ndim - 2];
  if (x.ndim < 3 || x.ndim > 4) {
    throw new ShapeError(`${op}: x [${x.shape}] must be [batch, seq, heads·dim] or [batch, seq, heads, dim]`);
  }
  const [batch, xs] = x.shape;
  const width = x.shape.slice(2).reduce((a, b) => a * b, 1);
  if (!Number.isInteger(heads) || heads < 1 || width !== heads * dim || xs !== seq) {
    throw new ShapeError(`${op}: x [${x.shape}] does not split into ${heads} heads of ${tables}`);
  }
  if (x.ndim === 4 && x.shape[2] !== heads) {
    throw new ShapeError(`${op}: x [${x.shape}] has ${x.shape[2]} heads, expected ${heads}`);
  }
  if (dim % 2 !== 0) throw new ShapeError(`${op}: head width ${dim} of ${tables} must be even`);
  const lead = cos.shape.slice(0, -2).reduce((a, b) => a * b, 1);
  if (lead !== 1 && (lead !== batch || cos.shape.slice(1, -2).some((d) => d !== 1))) {
    throw new ShapeError(`${op}: ${tables} must hold one table or one per batch row of x [${x.shape}]`);
  }
  const base: Omit<RopeArgs, "inHeadsFirst" | "outHeadsFirst" | "backward"> = {
    batch,
    seq,
    heads,
    dim,
    perBatch: lead !== 1,
  };
  const device = x.device, be = device.backend;
  const tabs = () => [cos.storage(op), sin.storage(op)];
  const forward = { ...base, inHeadsFirst: false, outHeadsFirst: true, backward: false };
  const [ys] = be.run(ROPE, [x.storage(op), ...tabs()], forward);
  return fromStorage(ys, [batch, heads, seq, dim], x.dtype, device, {
    op,
    inputs: [x],
    backward: (g) => {
      const back = { ...base, inHeadsFirst: true, outHeadsFirst: false, backward: true };
      const [dx] = be.run(ROPE, [g.storage(op), ...tabs()], back);
      return [fromStorage(dx, x.shape, x.dtype, device)];
    },
  });
}

/**
 * The composed twin of {@link rotaryHeads} without the head split: t · cos + (t · rot) · sin, with cos and
 * sin broadcast over t's leading axes and `rot` the [dim, dim] rotate-half matrix; keeps nothing of its
 * own (cos, sin and rot are constants, no gradient flows to them).
 */
export function rotaryEmbedding(t: Tensor, cos: Tensor, sin: Tensor, rot: Tensor): Tensor {
  const op = "rotaryEmbedding";
  for (const [what, v] of [["t", t], ["cos", cos], ["sin", sin], ["rot", rot]] as const) {
    if (!(v instanceof Tensor)) throw new ShapeError(`${op}: ${what} must be a Tensor`);
  }
  const d = t.shape[t.ndim - 1];
  if (rot.ndim !== 2 || rot.shape[0] !== d || rot.shape[1] !== d) {
    throw new ShapeError(`${op}: rot [${rot.shape}] must be [${d}, ${d}] for t [${t.shape}]`);
  }
  const y = lean((temps) => {
    const a = mul(t, cos), r = matmul(t, rot);
    const b = mul(r, sin);
    temps.push(a, r, b);
    return add(a, b);
  });
  return attach(y, op, [t], (g) => {
    const gs = mul(g, sin);
    return [add(mul(g, cos), matmul(gs, transpose(rot, 0, 1)))];
  });
}
