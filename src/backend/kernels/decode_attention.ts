/**
 * `decodeAttention`: one decoding step of grouped-query attention over a preallocated key/value cache
 * (wgsl/decode_attention.wgsl). It takes this step's raw query, key and value rows, applies rotate-half
 * RoPE to the query and key, writes the key and value into cache slot `pos` in place, and attends over
 * the row's visible slots `start[b] .. pos` (slots before `start[b]` are left padding). The cache is
 * [batch, kvHeads, capacity, headDim]; it is an input the kernel updates, so a step costs one slot of
 * memory traffic for the write instead of a copy of the whole cache.
 * @module
 */
import { type DType, hostArray } from "../../core/dtype.ts";
import { roundToF16 } from "../../core/half.ts";
import { DTypeError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD } from "./record.ts";

/** Arguments of {@link DECODE_ATTENTION}. */
export interface DecodeAttentionArgs {
  batch: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Slots of the cache per (row, key/value head). */
  capacity: number;
  /** The slot this step's key and value go to; the step attends over slots up to it. */
  pos: number;
  /** First visible slot of each row (left padding before it), [batch]. */
  start: Int32Array;
  /** Score scale, transformers' head_dim^-½. */
  scale: number;
}

const round = (
  x: number,
  dtype: DType,
) => (dtype === "f16" ? roundToF16(x) : dtype === "f32" ? Math.fround(x) : x);

/** Largest head width: one invocation per element of a head. */
const MAX_HEAD_DIM = 256;

/**
 * The decode attention kernel: inputs q [batch, heads·d], k and v [batch, kvHeads·d], cos and sin
 * [batch, d] (f32), cacheK and cacheV [batch, kvHeads, capacity, d] (updated in place), scratch start;
 * outputs out [batch, heads·d] and the f32 score scratch [batch, heads, capacity] (only the visible
 * slots of it are defined).
 */
export const DECODE_ATTENTION: KernelRecord<DecodeAttentionArgs> = {
  name: "decode_attention",
  template: "decode_attention",
  bindings: [
    { name: "q", access: "read" },
    { name: "k", access: "read" },
    { name: "v", access: "read" },
    { name: "cos_t", access: "read" },
    { name: "sin_t", access: "read" },
    { name: "cache_k", access: "write" },
    { name: "cache_v", access: "write" },
    { name: "start", access: "read" },
    { name: "out", access: "write" },
    { name: "scores", access: "write" },
  ],
  params: [
    { name: "batch", type: "u32" },
    { name: "heads", type: "u32" },
    { name: "kv_heads", type: "u32" },
    { name: "head_dim", type: "u32" },
    { name: "cap", type: "u32" },
    { name: "pos", type: "u32" },
    { name: "scale", type: "f32" },
    NEG_INF_FIELD,
  ],
  check(inputs, a) {
    const op = "decodeAttention";
    const [q, k, v, cos, sin, ck, cv] = inputs;
    if (inputs.length !== 7) throw new ShapeError(`${op}: takes 7 inputs, got ${inputs.length}`);
    const { batch, heads, kvHeads, headDim: d, capacity, pos } = a;
    if (!(heads >= 1 && kvHeads >= 1 && heads % kvHeads === 0)) {
      throw new ShapeError(`${op}: ${heads} query heads do not group over ${kvHeads} key/value heads`);
    }
    if (!(d >= 2 && d % 2 === 0 && d <= MAX_HEAD_DIM)) {
      throw new ShapeError(`${op}: head width ${d} must be even and at most ${MAX_HEAD_DIM}`);
    }
    if (!(pos >= 0 && pos < capacity)) {
      throw new ShapeError(`${op}: slot ${pos} is outside a cache of ${capacity} slots`);
    }
    if (a.start.length !== batch) {
      throw new ShapeError(`${op}: start has ${a.start.length} rows, batch ${batch}`);
    }
    for (let b = 0; b < batch; b++) {
      if (!(a.start[b] >= 0 && a.start[b] <= pos)) {
        throw new ShapeError(`${op}: row ${b} starts at slot ${a.start[b]}, after the step's slot ${pos}`);
      }
    }
    for (const [t, name] of [[k, "k"], [v, "v"], [ck, "cacheK"], [cv, "cacheV"]] as const) {
      if (t.dtype !== q.dtype) throw new DTypeError(`${op}: ${name} is ${t.dtype}, q is ${q.dtype}`);
    }
    if (cos.dtype !== "f32" || sin.dtype !== "f32") throw new DTypeError(`${op}: cos and sin must be f32`);
    expectSize(q.size, batch * heads * d, op, `q [${batch}, ${heads * d}]`);
    expectSize(k.size, batch * kvHeads * d, op, `k [${batch}, ${kvHeads * d}]`);
    expectSize(v.size, batch * kvHeads * d, op, `v [${batch}, ${kvHeads * d}]`);
    expectSize(cos.size, batch * d, op, `cos [${batch}, ${d}]`);
    expectSize(sin.size, batch * d, op, `sin [${batch}, ${d}]`);
    expectSize(
      ck.size,
      batch * kvHeads * capacity * d,
      op,
      `cacheK [${batch}, ${kvHeads}, ${capacity}, ${d}]`,
    );
    expectSize(
      cv.size,
      batch * kvHeads * capacity * d,
      op,
      `cacheV [${batch}, ${kvHeads}, ${capacity}, ${d}]`,
    );
  },
  outputs: ([q], a) => [
    {
      size: a.batch * a.heads * a.headDim,
      dtype: q.dtype,
      what: `decodeAttention: output [${a.batch}, ${a.heads * a.headDim}] (${q.dtype})`,
    },
    {
      size: a.batch * a.heads * a.capacity,
      dtype: "f32",
      what: `decodeAttention: scores [${a.batch}, ${a.heads}, ${a.capacity}] (f32)`,
    },
  ],
  specialise: ([q]) => ({ T: q.dtype }),
  uniforms: (a) => ({
    batch: a.batch,
    heads: a.heads,
    kv_heads: a.kvHeads,
    head_dim: a.headDim,
    cap: a.capacity,
    pos: a.pos,
    scale: a.scale,
    neg_inf: -Infinity,
  }),
  scratch: (a) => [a.start],
  geometry: (a) => ({ rows: a.batch * a.heads }),
  reference(inputs, a, [outSpec]) {
    const [q, k, v, cos, sin, ck, cv] = inputs;
    const { batch, heads, kvHeads, headDim: d, capacity, pos, scale } = a;
    const dtype = outSpec.dtype, hd2 = d / 2, group = heads / kvHeads;
    const out = hostArray(dtype, batch * heads * d);
    const scores = new Float32Array(batch * heads * capacity);
    const rope = (x: ArrayLike<number>, o: number, c: number, i: number) =>
      x[o + i] * cos[c + i] + (i < hd2 ? -x[o + i + hd2] : x[o + i - hd2]) * sin[c + i];
    // The writes first (as the first query head of each group does), rounded to the cache's dtype.
    for (let b = 0; b < batch; b++) {
      for (let g = 0; g < kvHeads; g++) {
        const ko = (b * kvHeads + g) * d, slot = ((b * kvHeads + g) * capacity + pos) * d;
        for (let i = 0; i < d; i++) {
          ck[slot + i] = round(rope(k, ko, b * d, i), dtype);
          cv[slot + i] = v[ko + i];
        }
      }
    }
    const s = new Float64Array(capacity);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        const g = Math.floor(h / group), qo = (b * heads + h) * d, cbase = (b * kvHeads + g) * capacity;
        const qr = Float64Array.from({ length: d }, (_, i) => rope(q, qo, b * d, i));
        let m = -Infinity;
        for (let j = a.start[b]; j <= pos; j++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += qr[i] * ck[(cbase + j) * d + i];
          s[j] = dot * scale;
          scores[(b * heads + h) * capacity + j] = s[j];
          m = Math.max(m, s[j]);
        }
        let total = 0;
        for (let j = a.start[b]; j <= pos; j++) total += s[j] = Math.exp(s[j] - m);
        for (let i = 0; i < d; i++) {
          let acc = 0;
          for (let j = a.start[b]; j <= pos; j++) acc += s[j] * cv[(cbase + j) * d + i];
          out[qo + i] = acc / total;
        }
      }
    }
    return [out, scores];
  },
};
