/**
 * `decodeAttention`: one decoding step of grouped-query attention over a preallocated key/value cache
 * (wgsl/decode_attention.wgsl). It takes this step's raw query, key and value rows, applies rotate-half
 * RoPE to the query and key, writes the key and value into cache slot `pos` in place, and attends over
 * the row's visible slots `start[b] .. pos` (slots before `start[b]` are left padding). The cache is
 * [batch, kvHeads, capacity, headDim]; it is an input the kernel updates, so a step costs one slot of
 * memory traffic for the write instead of a copy of the whole cache.
 *
 * Nothing of a step is uploaded: `start` is a device storage (f32, written once per generation), and the
 * rotary angles are rows of cos/sin tables indexed by each row's position pos − start[b] (the left-padded
 * layout: a row's first real token is position 0). The query, key and value rows are read at a stride and
 * an offset each ({@link DecodeAttentionArgs.layout}), so one [batch, (heads + 2 kvHeads) d] projection
 * output can be bound as all three.
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { roundTo } from "./gemv.ts";
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
  /** Score scale, transformers' head_dim^-½. */
  scale: number;
  /**
   * Row stride and column offset (elements) of q, k and v in their storages; default: each its own
   * [batch, heads·d] or [batch, kvHeads·d] tensor.
   */
  layout?: QkvLayout;
}

/** Where q, k and v rows lie in their storages (all in elements). */
export interface QkvLayout {
  qStride: number;
  qOffset: number;
  kStride: number;
  kOffset: number;
  vStride: number;
  vOffset: number;
}

/** The default layout: q, k and v each a tensor of its own. */
function layoutOf(a: DecodeAttentionArgs): QkvLayout {
  const d = a.headDim;
  return a.layout ?? {
    qStride: a.heads * d,
    qOffset: 0,
    kStride: a.kvHeads * d,
    kOffset: 0,
    vStride: a.kvHeads * d,
    vOffset: 0,
  };
}

/** Largest head width: one invocation per element of a head. */
const MAX_HEAD_DIM = 256;

/**
 * The decode attention kernel: inputs q, k and v (rows as {@link DecodeAttentionArgs.layout} says), cos
 * and sin tables [rows > pos, d] (f32), cacheK and cacheV [batch, kvHeads, capacity, d] (updated in
 * place), start [batch] (f32 slot indices; a start past pos counts as pos); outputs out
 * [batch, heads·d] and the f32 scratch [batch, heads, capacity] of the unnormalised weights
 * exp(score − max) (only the visible slots of it are defined).
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
    { name: "cap", type: "u32" },
    { name: "pos", type: "u32" },
    { name: "scale", type: "f32" },
    NEG_INF_FIELD,
    { name: "q_stride", type: "u32" },
    { name: "q_off", type: "u32" },
    { name: "k_stride", type: "u32" },
    { name: "k_off", type: "u32" },
    { name: "v_stride", type: "u32" },
    { name: "v_off", type: "u32" },
  ],
  check(inputs, a) {
    const op = "decodeAttention";
    const [q, k, v, cos, sin, ck, cv, start] = inputs;
    if (inputs.length !== 8) throw new ShapeError(`${op}: takes 8 inputs, got ${inputs.length}`);
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
    for (const [t, name] of [[k, "k"], [v, "v"], [ck, "cacheK"], [cv, "cacheV"]] as const) {
      if (t.dtype !== q.dtype) throw new DTypeError(`${op}: ${name} is ${t.dtype}, q is ${q.dtype}`);
    }
    if (cos.dtype !== "f32" || sin.dtype !== "f32" || start.dtype !== "f32") {
      throw new DTypeError(`${op}: cos, sin and start must be f32`);
    }
    const l = layoutOf(a);
    // Each row's last element read: row batch − 1 at its offset, plus its heads.
    const rowsFit = (size: number, stride: number, off: number, width: number) =>
      Number.isInteger(stride) && Number.isInteger(off) && off >= 0 && stride >= off + width &&
      size >= (batch - 1) * stride + off + width;
    for (
      const [t, name, stride, off, width] of [
        [q, "q", l.qStride, l.qOffset, heads * d],
        [k, "k", l.kStride, l.kOffset, kvHeads * d],
        [v, "v", l.vStride, l.vOffset, kvHeads * d],
      ] as const
    ) {
      if (!rowsFit(t.size, stride, off, width)) {
        throw new ShapeError(
          `${op}: ${name} of ${t.size} elements does not hold ${batch} rows of ${width} at stride ${stride}, offset ${off}`,
        );
      }
    }
    if (cos.size !== sin.size || cos.size % d !== 0 || cos.size < (pos + 1) * d) {
      throw new ShapeError(
        `${op}: cos and sin (${cos.size}, ${sin.size} elements) must be tables of at least ${
          pos + 1
        } rows of ${d}`,
      );
    }
    expectSize(start.size, batch, op, `start [${batch}]`);
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
  specialise: ([q], a) => ({ T: q.dtype, D: a.headDim, VEC: a.headDim % 8 === 0 }),
  uniforms: (a) => ({
    batch: a.batch,
    heads: a.heads,
    kv_heads: a.kvHeads,
    cap: a.capacity,
    pos: a.pos,
    scale: a.scale,
    neg_inf: -Infinity,
    ...((l) => ({
      q_stride: l.qStride,
      q_off: l.qOffset,
      k_stride: l.kStride,
      k_off: l.kOffset,
      v_stride: l.vStride,
      v_off: l.vOffset,
    }))(layoutOf(a)),
  }),
  geometry: (a) => ({ rows: a.batch * a.heads }),
  reference(inputs, a, [outSpec]) {
    const [q, k, v, cos, sin, ck, cv, startT] = inputs;
    const { batch, heads, kvHeads, headDim: d, capacity, pos, scale } = a;
    const l = layoutOf(a);
    const dtype = outSpec.dtype, hd2 = d / 2, group = heads / kvHeads;
    const out = hostArray(dtype, batch * heads * d);
    const scores = new Float32Array(batch * heads * capacity);
    const start = Array.from({ length: batch }, (_, b) => Math.min(Math.trunc(startT[b]), pos));
    const rope = (x: ArrayLike<number>, o: number, c: number, i: number) =>
      x[o + i] * cos[c + i] + (i < hd2 ? -x[o + i + hd2] : x[o + i - hd2]) * sin[c + i];
    // The writes first (as the first query head of each group does), rounded to the cache's dtype.
    for (let b = 0; b < batch; b++) {
      const c = (pos - start[b]) * d;
      for (let g = 0; g < kvHeads; g++) {
        const ko = b * l.kStride + l.kOffset + g * d, vo = b * l.vStride + l.vOffset + g * d;
        const slot = ((b * kvHeads + g) * capacity + pos) * d;
        for (let i = 0; i < d; i++) {
          ck[slot + i] = roundTo(rope(k, ko, c, i), dtype);
          cv[slot + i] = v[vo + i];
        }
      }
    }
    const s = new Float64Array(capacity);
    for (let b = 0; b < batch; b++) {
      const c = (pos - start[b]) * d;
      for (let h = 0; h < heads; h++) {
        const g = Math.floor(h / group), cbase = (b * kvHeads + g) * capacity;
        const qo = b * l.qStride + l.qOffset + h * d, oo = (b * heads + h) * d;
        const qr = Float64Array.from({ length: d }, (_, i) => rope(q, qo, c, i));
        let m = -Infinity;
        for (let j = start[b]; j <= pos; j++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += qr[i] * ck[(cbase + j) * d + i];
          s[j] = dot * scale;
          m = Math.max(m, s[j]);
        }
        let total = 0;
        for (let j = start[b]; j <= pos; j++) {
          total += s[j] = Math.exp(s[j] - m);
          scores[(b * heads + h) * capacity + j] = s[j];
        }
        for (let i = 0; i < d; i++) {
          let acc = 0;
          for (let j = start[b]; j <= pos; j++) acc += s[j] * cv[(cbase + j) * d + i];
          out[oo + i] = acc / total;
        }
      }
    }
    return [out, scores];
  },
};
