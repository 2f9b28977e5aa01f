/**
 * Memory-lean forms of three decoder-layer pieces, each one differentiable op that keeps only what its
 * backward needs instead of every intermediate of its composition: RMSNorm (keeps x and one 1/rms per
 * row), SiLU(gate) · up (keeps gate and up) and the rotary embedding (keeps nothing but its constants).
 * The forwards free their temporaries at once; the backwards recompute what they need. Values equal the
 * compositions they replace (the same primitives in the same order).
 * @module
 */
import { ConfigError, ShapeError } from "../core/errors.ts";
import { isGradEnabled, noGrad } from "./graph.ts";
import { fromStorage, Tensor } from "./tensor.ts";
import { add, matmul, mul, rsqrt, scale, silu, square, sub, sum, transpose } from "./ops.ts";

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

/**
 * RMSNorm over the last axis, x / √(mean(x²) + eps) · weight, keeping x and the per-row 1/rms for the
 * backward (the composition keeps x², the normalised x and the product besides).
 */
export function fusedRmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  const op = "fusedRmsNorm";
  if (!(x instanceof Tensor) || !(weight instanceof Tensor)) {
    throw new ShapeError(`${op}: x and weight must be Tensors`);
  }
  const n = x.shape[x.ndim - 1];
  if (weight.ndim !== 1 || weight.shape[0] !== n) {
    throw new ShapeError(`${op}: weight [${weight.shape}] does not match the last dim of input [${x.shape}]`);
  }
  if (!(eps >= 0)) throw new ConfigError(`${op}: eps must be a non-negative number, got ${eps}`);
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

/** SiLU(gate) · up (SwiGLU's product), keeping gate and up only. */
export function siluMul(gate: Tensor, up: Tensor): Tensor {
  const op = "siluMul";
  if (!(gate instanceof Tensor) || !(up instanceof Tensor)) {
    throw new ShapeError(`${op}: gate and up must be Tensors`);
  }
  if (gate.shape.length !== up.shape.length || gate.shape.some((d, i) => d !== up.shape[i])) {
    throw new ShapeError(`${op}: gate [${gate.shape}] and up [${up.shape}] must have one shape`);
  }
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
 * The rotary embedding t · cos + (t · rot) · sin, with cos and sin broadcast over t's leading axes and
 * `rot` the [dim, dim] rotate-half matrix; keeps nothing of its own (cos, sin and rot are constants, no
 * gradient flows to them).
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
