/**
 * `adamw`: one AdamW step over many parameters packed into one array (wgsl/adamw.wgsl), the kernel of the
 * multi-tensor optimizer in src/optim/adamw.ts. The packed array is a list of segments, one per parameter;
 * each segment has its own step count (so its own bias corrections) and may be inactive (a parameter
 * without a gradient this step: its moments pass through unchanged and its values are not used).
 *
 * The arithmetic is torch.optim.AdamW's single-tensor update, op for op, each op rounded to the state
 * dtype (f32, or f64 on the CPU for f64 parameters):
 * decayed = p·(1 − lr·wd); m ← m + (g − m)·(1 − β₁); v ← v·β₂ + ((1 − β₂)·g)·g;
 * denom = √v / √(1 − β₂ᵗ) + eps; p ← decayed + (m·(−lr / (1 − β₁ᵗ))) / denom.
 * Scalars are rounded to the state dtype, as torch rounds them to the tensor's. f16 parameters are read
 * into f32, updated there and rounded once (the moments stay f32), so eps = 1e-8 never underflows.
 * @module
 */
import type { DType, HostArray } from "../../core/dtype.ts";
import { f32Bits, hostArray } from "../../core/dtype.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** One parameter's place in the packed arrays. */
export interface AdamWSegment {
  /** First element. */
  offset: number;
  /** Elements. */
  size: number;
  /** The parameter's step count after this step (1 on its first update). */
  step: number;
  /** Whether the parameter has a gradient this step (inactive segments keep their moments). */
  active: boolean;
}

/** Arguments of {@link ADAMW}. */
export interface AdamWArgs {
  /** Elements of the packed arrays. */
  total: number;
  /** Segments in increasing offset order, not overlapping. */
  segments: readonly AdamWSegment[];
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/** Words per segment in the scratch table: start, end, active, step size bits, √(1 − β₂ᵗ) bits. */
const SEGMENT_WORDS = 5;

/** The state dtype of a parameter dtype: f32, except f64 (CPU) parameters keep f64 moments. */
export function adamwStateDType(param: DType): DType {
  return param === "f64" ? "f64" : "f32";
}

/** The per-segment scalars torch computes in double precision: −lr / (1 − β₁ᵗ) and √(1 − β₂ᵗ). */
function segmentScalars(a: AdamWArgs, step: number): { stepSize: number; bias2Sqrt: number } {
  return { stepSize: -a.lr / (1 - a.beta1 ** step), bias2Sqrt: Math.sqrt(1 - a.beta2 ** step) };
}

/** The multi-tensor AdamW kernel: inputs p, g (parameter dtype), m, v (state dtype); outputs p, m, v. */
export const ADAMW: KernelRecord<AdamWArgs> = {
  name: "adamw",
  template: "adamw",
  bindings: [
    { name: "param", access: "read" },
    { name: "grad", access: "read" },
    { name: "exp_avg", access: "read" },
    { name: "exp_avg_sq", access: "read" },
    { name: "segs", access: "read" },
    { name: "param_out", access: "write" },
    { name: "exp_avg_out", access: "write" },
    { name: "exp_avg_sq_out", access: "write" },
  ],
  params: [
    { name: "n", type: "u32" },
    { name: "segments", type: "u32" },
    { name: "decay", type: "f32" },
    { name: "one_minus_beta1", type: "f32" },
    { name: "beta2", type: "f32" },
    { name: "one_minus_beta2", type: "f32" },
    { name: "eps", type: "f32" },
    { name: "use_decay", type: "u32" },
  ],
  check([p, g, m, v], a) {
    const op = "adamw";
    expectSize(p.size, a.total, op, "packed parameters");
    expectSize(g.size, a.total, op, "packed gradients");
    expectSize(m.size, a.total, op, "packed exp_avg");
    expectSize(v.size, a.total, op, "packed exp_avg_sq");
    if (g.dtype !== p.dtype) throw new DTypeError(`${op}: gradients are ${g.dtype}, parameters ${p.dtype}`);
    const state = adamwStateDType(p.dtype);
    for (const [what, s] of [["exp_avg", m], ["exp_avg_sq", v]] as const) {
      if (s.dtype !== state) {
        throw new DTypeError(`${op}: ${what} is ${s.dtype}; ${p.dtype} parameters keep ${state} moments`);
      }
    }
    let end = 0;
    a.segments.forEach((s, i) => {
      if (!(Number.isInteger(s.offset) && s.offset >= end && s.size >= 0 && s.offset + s.size <= a.total)) {
        throw new ShapeError(
          `${op}: segment ${i} [${s.offset}, ${
            s.offset + s.size
          }) overlaps the one before or leaves the ${a.total} packed elements`,
        );
      }
      if (!(Number.isInteger(s.step) && s.step >= 1)) {
        throw new ShapeError(`${op}: segment ${i} has step ${s.step}, not a positive integer`);
      }
      end = s.offset + s.size;
    });
  },
  outputs: ([p, , m], a) => [
    { size: a.total, dtype: p.dtype, what: `adamw: packed parameters of ${a.total} elements (${p.dtype})` },
    { size: a.total, dtype: m.dtype, what: `adamw: packed exp_avg of ${a.total} elements (${m.dtype})` },
    { size: a.total, dtype: m.dtype, what: `adamw: packed exp_avg_sq of ${a.total} elements (${m.dtype})` },
  ],
  specialise: ([p]) => ({ T: p.dtype }),
  uniforms: (a) => ({
    n: a.total,
    segments: a.segments.length,
    decay: 1 - a.lr * a.weightDecay,
    one_minus_beta1: 1 - a.beta1,
    beta2: a.beta2,
    one_minus_beta2: 1 - a.beta2,
    eps: a.eps,
    use_decay: a.weightDecay === 0 ? 0 : 1,
  }),
  scratch(a) {
    const w = new Uint32Array(Math.max(1, a.segments.length * SEGMENT_WORDS));
    a.segments.forEach((s, i) => {
      const { stepSize, bias2Sqrt } = segmentScalars(a, s.step);
      w.set([s.offset, s.offset + s.size, s.active ? 1 : 0, f32Bits(stepSize), f32Bits(bias2Sqrt)], i * 5);
    });
    return [w];
  },
  geometry: (a) => ({ elements: a.total }),
  reference([p, g, m, v], a, [po, mo, vo]) {
    // Every op rounded to the state dtype, as torch's f32 tensor ops round (f64 state: no rounding).
    const r = mo.dtype === "f64" ? (x: number) => x : Math.fround;
    const pOut = hostArray(po.dtype, a.total), mOut = hostArray(mo.dtype, a.total);
    const vOut = hostArray(vo.dtype, a.total);
    pOut.set(p);
    mOut.set(m);
    vOut.set(v);
    const decay = r(1 - a.lr * a.weightDecay), omb1 = r(1 - a.beta1), b2 = r(a.beta2);
    const omb2 = r(1 - a.beta2), eps = r(a.eps);
    for (const s of a.segments) {
      if (!s.active) continue;
      const sc = segmentScalars(a, s.step);
      const stepSize = r(sc.stepSize), bias2Sqrt = r(sc.bias2Sqrt);
      for (let i = s.offset; i < s.offset + s.size; i++) {
        const gi = g[i];
        const decayed = a.weightDecay === 0 ? p[i] : r(p[i] * decay);
        const mi = r(m[i] + r(r(gi - m[i]) * omb1));
        const vi = r(r(v[i] * b2) + r(r(gi * omb2) * gi));
        const denom = r(r(r(Math.sqrt(vi)) / bias2Sqrt) + eps);
        pOut[i] = r(decayed + r(r(mi * stepSize) / denom));
        mOut[i] = mi;
        vOut[i] = vi;
      }
    }
    return [pOut, mOut, vOut] as HostArray[];
  },
};
