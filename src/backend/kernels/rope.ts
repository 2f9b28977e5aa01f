/**
 * The rotary position embedding (transformers' Llama: q · cos + rotate_half(q) · sin, rotate_half(x) =
 * cat(−x₂, x₁) over the two halves of each head) with the head split folded in, as one dispatch forward
 * and one backward (wgsl/rope.wgsl). Input and output each lie as [batch, seq, heads, dim] (a
 * projection's output, [batch, seq, heads·dim]) or [batch, heads, seq, dim] (attention's layout), so the
 * forward reads the projection and writes attention's operand, and the backward reads attention's
 * gradient and writes the projection's: no permute, no reshape copy and no [dim, dim] rotation GEMM.
 * @module
 */
import { type DType, hostArray } from "../../core/dtype.ts";
import { roundToF16 } from "../../core/half.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of {@link ROPE}. */
export interface RopeArgs {
  batch: number;
  seq: number;
  heads: number;
  /** Head width (even). */
  dim: number;
  /** Whether cos and sin hold a table per batch row ([batch, seq, dim]) rather than one ([seq, dim]). */
  perBatch: boolean;
  /** Input layout: [batch, heads, seq, dim] when true, else [batch, seq, heads, dim]. */
  inHeadsFirst: boolean;
  /** Output layout, as `inHeadsFirst`. */
  outHeadsFirst: boolean;
  /** The backward (the forward's transpose, applied to an output gradient) instead of the forward. */
  backward: boolean;
}

const round = (v: number, dtype: DType) =>
  dtype === "f16" ? roundToF16(v) : dtype === "f32" ? Math.fround(v) : v;

/** Offset of head row (b, t, h) in the given layout. */
function rowOffset(a: RopeArgs, headsFirst: boolean, b: number, t: number, h: number): number {
  return (headsFirst ? (b * a.heads + h) * a.seq + t : (b * a.seq + t) * a.heads + h) * a.dim;
}

const opName = (a: RopeArgs) => (a.backward ? "rope backward" : "rope");

/** The kernel: inputs x [batch·seq·heads·dim] and cos, sin ([batch or 1, seq, dim]); output y. */
export const ROPE: KernelRecord<RopeArgs> = {
  name: "rope",
  template: "rope",
  bindings: [
    { name: "x", access: "read" },
    { name: "cs", access: "read" },
    { name: "sn", access: "read" },
    { name: "y", access: "write" },
  ],
  params: [
    { name: "n", type: "u32" },
    { name: "seq", type: "u32" },
    { name: "heads", type: "u32" },
    { name: "dim", type: "u32" },
    { name: "cos_batch", type: "u32" },
    { name: "in_heads_first", type: "u32" },
    { name: "out_heads_first", type: "u32" },
  ],
  check([x, cos, sin], a) {
    const op = opName(a);
    if (cos.dtype !== x.dtype || sin.dtype !== x.dtype) {
      throw new DTypeError(`${op}: x ${x.dtype}, cos ${cos.dtype}, sin ${sin.dtype} must agree`);
    }
    if (a.dim % 2 !== 0) throw new ShapeError(`${op}: head width ${a.dim} must be even (rotate-half)`);
    expectSize(
      x.size,
      a.batch * a.seq * a.heads * a.dim,
      op,
      `x [${a.batch}, ${a.seq}, ${a.heads}, ${a.dim}]`,
    );
    const tab = (a.perBatch ? a.batch : 1) * a.seq * a.dim;
    expectSize(cos.size, tab, op, `cos [${a.perBatch ? a.batch : 1}, ${a.seq}, ${a.dim}]`);
    expectSize(sin.size, tab, op, `sin [${a.perBatch ? a.batch : 1}, ${a.seq}, ${a.dim}]`);
  },
  outputs: ([x], a) => [{
    size: a.batch * a.seq * a.heads * a.dim,
    dtype: x.dtype,
    what: `${opName(a)}: output [${a.batch}, ${a.seq}, ${a.heads}, ${a.dim}] (${x.dtype})`,
  }],
  specialise: ([x], a) => ({ T: x.dtype, BACKWARD: a.backward }),
  uniforms: (a, [y]) => ({
    n: y.size,
    seq: a.seq,
    heads: a.heads,
    dim: a.dim,
    cos_batch: a.perBatch ? 1 : 0,
    in_heads_first: a.inHeadsFirst ? 1 : 0,
    out_heads_first: a.outHeadsFirst ? 1 : 0,
  }),
  geometry: (_, [y]) => ({ elements: y.size }),
  reference([x, cos, sin], a, [spec]) {
    const dt = spec.dtype, d = a.dim, half = d / 2, y = hostArray(dt, spec.size);
    for (let b = 0; b < a.batch; b++) {
      for (let t = 0; t < a.seq; t++) {
        const tab = ((a.perBatch ? b : 0) * a.seq + t) * d;
        for (let h = 0; h < a.heads; h++) {
          const src = rowOffset(a, a.inHeadsFirst, b, t, h), dst = rowOffset(a, a.outHeadsFirst, b, t, h);
          for (let i = 0; i < d; i++) {
            const c = round(x[src + i] * cos[tab + i], dt);
            let r: number;
            if (a.backward) {
              r = i < half
                ? round(x[src + i + half] * sin[tab + i + half], dt)
                : -round(x[src + i - half] * sin[tab + i - half], dt);
            } else {
              r = round((i < half ? -x[src + i + half] : x[src + i - half]) * sin[tab + i], dt);
            }
            y[dst + i] = c + r;
          }
        }
      }
    }
    return [y];
  },
};
