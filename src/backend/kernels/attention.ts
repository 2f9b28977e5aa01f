/**
 * Memory-efficient causal attention (FlashAttention-style): forward and backward as three kernels that
 * never hold a [seq, keys] score matrix. The forward keeps only the output and one log-sum-exp per query
 * row; the backward recomputes each weight from them. Two schedules with one contract and one CPU
 * reference: the tiled one (FlashAttention-2's: a workgroup per block of query rows or key rows, the
 * other side staged in workgroup memory tile by tile, per-invocation register tiles; wgsl/attention/
 * forward.wgsl, backward_q.wgsl, backward_kv.wgsl, sharing shared.wgsl) for head widths up to
 * {@link TILED_MAX_DIM}, and the row one (a workgroup per query row or key row; wgsl/attention/rows_*.wgsl)
 * for wider heads.
 *
 * Layouts: q, o, dO [batch, heads, seq, dim]; k, v [batch, kvHeads, keys, dim] with `heads` a multiple of
 * `kvHeads` (grouped-query attention: head h reads key/value head ⌊h / (heads / kvHeads)⌋, as
 * transformers' repeat_kv, without repeating anything). Query i sits at position keys − seq + i (earlier
 * keys are a cache). Key j is visible to the query at position qa when j ≤ qa, qa − j < window (window > 0)
 * and keyMask[b, j] = 1. A query row that sees no key gets transformers' eager result: its additive mask
 * holds one finite value everywhere, so its weights are uniform over all keys; its log-sum-exp is stored
 * as +∞ to mark it, and the backward treats it the same way.
 * @module
 */
import type { DType, HostArray } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import { ConfigError, ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD, type OutputSpec, type ParamLayout } from "./record.ts";

/** Sizes and options shared by the three attention kernels. */
export interface AttentionArgs {
  batch: number;
  heads: number;
  kvHeads: number;
  /** Query rows per head. */
  seq: number;
  /** Key rows per key/value head (≥ seq; keys − seq earlier positions come from a cache). */
  keys: number;
  /** Head width. */
  dim: number;
  /** Multiplier of q · k (usually dim^−½). */
  scale: number;
  /** Sliding window: a query sees only the last `window` positions up to itself; 0 = unlimited. */
  window: number;
  /** 1 for real tokens, 0 for padding, [batch, keys]; null when every key is real. */
  keyMask: Int32Array | null;
}

/** The log-sum-exp's dtype: f32 for f32 and f16 storage (as the kernels compute), f64 on the CPU's f64. */
export function statsDType(dtype: DType): DType {
  return dtype === "f64" ? "f64" : "f32";
}

/** The fields every attention kernel reads; each adds the row count it is dispatched over. */
const SHARED: ParamLayout = [
  { name: "heads", type: "u32" },
  { name: "kv_heads", type: "u32" },
  { name: "seq", type: "u32" },
  { name: "keys", type: "u32" },
  { name: "window", type: "u32" },
  { name: "has_mask", type: "u32" },
  { name: "scale", type: "f32" },
];
const ROWS: ParamLayout = [{ name: "rows", type: "u32" }, ...SHARED];
const FORWARD_PARAMS: ParamLayout = [...ROWS, NEG_INF_FIELD];
const KV_PARAMS: ParamLayout = [{ name: "kv_rows", type: "u32" }, ...SHARED];

/** The values of `layout`'s fields for a call. */
const uniformsOf = (layout: ParamLayout) => (a: AttentionArgs) => {
  const all: Record<string, number> = allUniforms(a);
  return Object.fromEntries(layout.map((f) => [f.name, all[f.name]]));
};

const allUniforms = (a: AttentionArgs) => ({
  rows: a.batch * a.heads * a.seq,
  kv_rows: a.batch * a.kvHeads * a.keys,
  heads: a.heads,
  kv_heads: a.kvHeads,
  seq: a.seq,
  keys: a.keys,
  window: a.window,
  has_mask: a.keyMask === null ? 0 : 1,
  scale: a.scale,
  neg_inf: -Infinity,
});

/** The padding mask as device words (one placeholder word when there is none). */
const maskWords = (
  a: AttentionArgs,
) => [a.keyMask === null ? new Uint32Array(1) : Uint32Array.from(a.keyMask)];

const spec = (dtype: DType, a: AttentionArgs) => ({ T: dtype, L: statsDType(dtype), D: a.dim });

/** Throws a ShapeError naming `op` when the sizes or the mask do not fit together. */
function checkArgs(
  op: string,
  inputs: readonly { size: number; dtype: DType }[],
  names: readonly string[],
  a: AttentionArgs,
): void {
  const { batch, heads, kvHeads, seq, keys, dim, window, keyMask } = a;
  const ints = { batch, heads, kvHeads, seq, keys, dim, window };
  for (const [k, v] of Object.entries(ints)) {
    if (!Number.isInteger(v) || v < 0) throw new ShapeError(`${op}: ${k} must be a whole number, got ${v}`);
  }
  if (kvHeads < 1 || heads % kvHeads !== 0) {
    throw new ShapeError(`${op}: ${heads} query heads are not a multiple of ${kvHeads} key/value heads`);
  }
  if (keys < seq) throw new ShapeError(`${op}: ${keys} keys for ${seq} queries (need keys >= seq)`);
  if (keyMask !== null) expectSize(keyMask.length, batch * keys, op, `keyMask [${batch}, ${keys}]`);
  const q = batch * heads * seq * dim, kv = batch * kvHeads * keys * dim, rows = batch * heads * seq;
  const sizes: Record<string, [number, string]> = {
    q: [q, `[${batch}, ${heads}, ${seq}, ${dim}]`],
    o: [q, `[${batch}, ${heads}, ${seq}, ${dim}]`],
    dout: [q, `[${batch}, ${heads}, ${seq}, ${dim}]`],
    k: [kv, `[${batch}, ${kvHeads}, ${keys}, ${dim}]`],
    v: [kv, `[${batch}, ${kvHeads}, ${keys}, ${dim}]`],
    lse: [rows, `[${batch}, ${heads}, ${seq}]`],
    delta: [rows, `[${batch}, ${heads}, ${seq}]`],
  };
  names.forEach((n, i) => expectSize(inputs[i].size, sizes[n][0], op, `${n} ${sizes[n][1]}`));
}

/** Visibility of key j to query row i of batch b (the kernels' key_visible and first_key together). */
function visible(a: AttentionArgs, b: number, i: number, j: number): boolean {
  const qa = a.keys - a.seq + i;
  if (j > qa) return false;
  if (a.window > 0 && qa - j >= a.window) return false;
  return a.keyMask === null || a.keyMask[b * a.keys + j] !== 0;
}

/**
 * Attention weights of one query row (length keys, f64), with the row's log-sum-exp (+∞ for a row
 * that sees no key, whose weights are uniform over all keys as in transformers' eager path).
 */
function rowWeights(
  a: AttentionArgs,
  q: HostArray,
  k: HostArray,
  b: number,
  h: number,
  i: number,
): { w: Float64Array; lse: number } {
  const { heads, kvHeads, seq, keys, dim, scale } = a;
  const qo = ((b * heads + h) * seq + i) * dim;
  const ko = (b * kvHeads + Math.floor(h / (heads / kvHeads))) * keys * dim;
  const s = new Float64Array(keys).fill(-Infinity);
  let m = -Infinity;
  for (let j = 0; j < keys; j++) {
    if (!visible(a, b, i, j)) continue;
    let dot = 0;
    for (let d = 0; d < dim; d++) dot += q[qo + d] * k[ko + j * dim + d];
    s[j] = dot * scale;
    m = Math.max(m, s[j]);
  }
  const w = new Float64Array(keys);
  if (m === -Infinity) return { w: w.fill(1 / keys), lse: Infinity };
  let l = 0;
  for (let j = 0; j < keys; j++) l += s[j] === -Infinity ? 0 : Math.exp(s[j] - m);
  for (let j = 0; j < keys; j++) w[j] = s[j] === -Infinity ? 0 : Math.exp(s[j] - m) / l;
  return { w, lse: m + Math.log(l) };
}

/** dp_j = dO_row · v_j for every key with a weight (0 elsewhere), in f64. */
function rowDp(a: AttentionArgs, dout: HostArray, v: HostArray, row: number, kvo: number, w: Float64Array) {
  const dp = new Float64Array(a.keys);
  for (let j = 0; j < a.keys; j++) {
    if (w[j] === 0) continue;
    let s = 0;
    for (let d = 0; d < a.dim; d++) s += dout[row * a.dim + d] * v[kvo + j * a.dim + d];
    dp[j] = s;
  }
  return dp;
}

const rowsOf = (a: AttentionArgs) => a.batch * a.heads * a.seq;
const shapeQ = (a: AttentionArgs) => `[${a.batch}, ${a.heads}, ${a.seq}, ${a.dim}]`;
const shapeKV = (a: AttentionArgs) => `[${a.batch}, ${a.kvHeads}, ${a.keys}, ${a.dim}]`;

/** Calls every (b, h, i) query row with its key/value head's offset. */
function eachRow(a: AttentionArgs, f: (b: number, h: number, i: number, row: number, kvo: number) => void) {
  for (let b = 0; b < a.batch; b++) {
    for (let h = 0; h < a.heads; h++) {
      const kvo = (b * a.kvHeads + Math.floor(h / (a.heads / a.kvHeads))) * a.keys * a.dim;
      for (let i = 0; i < a.seq; i++) f(b, h, i, (b * a.heads + h) * a.seq + i, kvo);
    }
  }
}

/** Forward: inputs q, k, v; scratch keyMask; outputs o [batch, heads, seq, dim] and lse [batch, heads, seq]. */
export const ATTENTION_FORWARD_ROWS: KernelRecord<AttentionArgs> = {
  name: "attention_forward_rows",
  template: "attention/rows_forward",
  includes: ["attention/rows_shared"],
  bindings: [
    { name: "q", access: "read" },
    { name: "k", access: "read" },
    { name: "v", access: "read" },
    { name: "kmask", access: "read" },
    { name: "o", access: "write" },
    { name: "lse", access: "write" },
  ],
  params: FORWARD_PARAMS,
  check: (inputs, a) => checkArgs("attention", inputs, ["q", "k", "v"], a),
  outputs: ([q], a): OutputSpec[] => [
    { size: rowsOf(a) * a.dim, dtype: q.dtype, what: `attention: output ${shapeQ(a)} (${q.dtype})` },
    { size: rowsOf(a), dtype: statsDType(q.dtype), what: `attention: log-sum-exp [${rowsOf(a)}]` },
  ],
  specialise: ([q], a) => spec(q.dtype, a),
  uniforms: uniformsOf(FORWARD_PARAMS),
  scratch: maskWords,
  geometry: (a) => ({ rows: a.dim === 0 ? 0 : rowsOf(a) }),
  reference([q, k, v], a, [os, ls]) {
    const o = hostArray(os.dtype, os.size), lse = hostArray(ls.dtype, ls.size);
    const { dim, keys } = a;
    eachRow(a, (b, h, i, row, kvo) => {
      const { w, lse: l } = rowWeights(a, q, k, b, h, i);
      lse[row] = l;
      for (let d = 0; d < dim; d++) {
        let acc = 0;
        for (let j = 0; j < keys; j++) acc += w[j] * v[kvo + j * dim + d];
        o[row * dim + d] = acc;
      }
    });
    return [o, lse];
  },
};

/**
 * Backward for the queries: inputs q, k, v, o, dO, lse; scratch keyMask; outputs dq and delta = Σ dO ⊙ O
 * per row (read by {@link ATTENTION_BACKWARD_KV_ROWS}).
 */
export const ATTENTION_BACKWARD_Q_ROWS: KernelRecord<AttentionArgs> = {
  name: "attention_backward_q_rows",
  template: "attention/rows_backward_q",
  includes: ["attention/rows_shared"],
  bindings: [
    { name: "q", access: "read" },
    { name: "k", access: "read" },
    { name: "v", access: "read" },
    { name: "o", access: "read" },
    { name: "dout", access: "read" },
    { name: "lse", access: "read" },
    { name: "kmask", access: "read" },
    { name: "dq", access: "write" },
    { name: "delta", access: "write" },
  ],
  params: ROWS,
  check: (inputs, a) => checkArgs("attention backward", inputs, ["q", "k", "v", "o", "dout", "lse"], a),
  outputs: ([q], a): OutputSpec[] => [
    { size: rowsOf(a) * a.dim, dtype: q.dtype, what: `attention backward: dq ${shapeQ(a)} (${q.dtype})` },
    { size: rowsOf(a), dtype: statsDType(q.dtype), what: `attention backward: delta [${rowsOf(a)}]` },
  ],
  specialise: ([q], a) => spec(q.dtype, a),
  uniforms: uniformsOf(ROWS),
  scratch: maskWords,
  geometry: (a) => ({ rows: a.dim === 0 ? 0 : rowsOf(a) }),
  reference([q, k, v, _o, dout], a, [dqs, ds]) {
    const dq = hostArray(dqs.dtype, dqs.size), delta = hostArray(ds.dtype, ds.size);
    const { dim, keys, scale } = a;
    eachRow(a, (b, h, i, row, kvo) => {
      const { w } = rowWeights(a, q, k, b, h, i);
      // delta = dO · O; in f64 from the weights (Σ w dp, equal in exact arithmetic), so that Σ ds = 0
      // holds without the rounding of the stored O, which dk's cancellations would amplify.
      const dps = rowDp(a, dout, v, row, kvo, w);
      let dl = 0;
      for (let j = 0; j < keys; j++) dl += w[j] * dps[j];
      delta[row] = dl;
      const acc = new Float64Array(dim);
      for (let j = 0; j < keys; j++) {
        if (w[j] === 0) continue;
        const dsj = w[j] * (dps[j] - dl);
        for (let d = 0; d < dim; d++) acc[d] += dsj * k[kvo + j * dim + d];
      }
      for (let d = 0; d < dim; d++) dq[row * dim + d] = acc[d] * scale;
    });
    return [dq, delta];
  },
};

/** Backward for keys and values: inputs q, k, v, dO, lse, delta; scratch keyMask; outputs dk and dv. */
export const ATTENTION_BACKWARD_KV_ROWS: KernelRecord<AttentionArgs> = {
  name: "attention_backward_kv_rows",
  template: "attention/rows_backward_kv",
  includes: ["attention/rows_shared"],
  bindings: [
    { name: "q", access: "read" },
    { name: "k", access: "read" },
    { name: "v", access: "read" },
    { name: "dout", access: "read" },
    { name: "lse", access: "read" },
    { name: "delta", access: "read" },
    { name: "kmask", access: "read" },
    { name: "dk", access: "write" },
    { name: "dv", access: "write" },
  ],
  params: KV_PARAMS,
  check: (inputs, a) => checkArgs("attention backward", inputs, ["q", "k", "v", "dout", "lse", "delta"], a),
  outputs: ([q], a): OutputSpec[] => {
    const n = a.batch * a.kvHeads * a.keys * a.dim;
    return [
      { size: n, dtype: q.dtype, what: `attention backward: dk ${shapeKV(a)} (${q.dtype})` },
      { size: n, dtype: q.dtype, what: `attention backward: dv ${shapeKV(a)} (${q.dtype})` },
    ];
  },
  specialise: ([q], a) => spec(q.dtype, a),
  uniforms: uniformsOf(KV_PARAMS),
  scratch: maskWords,
  geometry: (a) => ({ rows: a.dim === 0 ? 0 : a.batch * a.kvHeads * a.keys }),
  reference([q, k, v, dout], a, [dks, dvs]) {
    const acck = new Float64Array(dks.size), accv = new Float64Array(dvs.size);
    const { dim, keys, scale } = a;
    eachRow(a, (b, h, i, row, kvo) => {
      const { w } = rowWeights(a, q, k, b, h, i);
      // delta recomputed in f64 as in ATTENTION_BACKWARD_Q's reference (the stored one is rounded).
      const dps = rowDp(a, dout, v, row, kvo, w);
      let dl = 0;
      for (let j = 0; j < keys; j++) dl += w[j] * dps[j];
      for (let j = 0; j < keys; j++) {
        if (w[j] === 0) continue;
        const dsj = w[j] * (dps[j] - dl) * scale;
        for (let d = 0; d < dim; d++) {
          accv[kvo + j * dim + d] += w[j] * dout[row * dim + d];
          acck[kvo + j * dim + d] += dsj * q[row * dim + d];
        }
      }
    });
    const dk = hostArray(dks.dtype, dks.size), dv = hostArray(dvs.dtype, dvs.size);
    dk.set(acck);
    dv.set(accv);
    return [dk, dv];
  },
};

// -------------------------------------------------------------------------------------------------
// The tiled schedule

/** Widest head the tiled kernels take (their register tiles hold whole rows); wider ones use the rows. */
export const TILED_MAX_DIM = 128;

/** Workgroup memory every tile configuration fits in: WebGPU's default limit, so every device has it. */
export const ATTENTION_WORKGROUP_BYTES = 16384;

/**
 * Tiles of the forward and the query backward: BR query rows per workgroup, KS invocations per row
 * (splitting each key tile), BC keys per staged tile.
 */
export interface QueryTile {
  readonly BR: number;
  readonly KS: number;
  readonly BC: number;
}

/**
 * Tiles of the key/value backward: BC key rows per workgroup, KS invocations per key row (splitting
 * each query tile), BQ query rows per staged tile.
 */
export interface KeyTile {
  readonly BC: number;
  readonly KS: number;
  readonly BQ: number;
}

/** Tile choices of one call (benchmarks compare them; calls normally leave them to the defaults). */
export interface AttentionTiles {
  readonly forward?: QueryTile;
  readonly backwardQ?: QueryTile;
  readonly backwardKV?: KeyTile;
}

/** The arguments of the tiled kernels: {@link AttentionArgs} plus optional tile overrides. */
export interface TiledAttentionArgs extends AttentionArgs {
  readonly tiles?: AttentionTiles;
  /**
   * Workgroup bytes the tiles may use (default {@link ATTENTION_WORKGROUP_BYTES}); only for benchmarks
   * on a device known to have more (the H200 has 48 KiB).
   */
  readonly workgroupBytes?: number;
}

/** 4-wide chunks of a head row. */
const chunks = (dim: number) => Math.max(1, Math.ceil(dim / 4));

/**
 * Default tiles by head width. At width 64 these beat each of 9 variants per kernel on the H200
 * (bench/attention_bench.ts --variants, bench/NOTES.md "Tiled attention"); the wider ones are unmeasured.
 */
export function defaultTiles(dim: number): Required<AttentionTiles> {
  if (chunks(dim) <= 16) {
    return {
      forward: { BR: 64, KS: 2, BC: 16 },
      backwardQ: { BR: 64, KS: 2, BC: 16 },
      backwardKV: { BC: 32, KS: 4, BQ: 8 },
    };
  }
  return {
    forward: { BR: 32, KS: 2, BC: 8 },
    backwardQ: { BR: 32, KS: 2, BC: 8 },
    backwardKV: { BC: 16, KS: 4, BQ: 4 },
  };
}

/** Chunks of the query-side workgroup tile: the key and value tiles, at least one chunk per row to merge. */
const tileChunks = (t: QueryTile, dim: number) => Math.max(2 * t.BC * chunks(dim), t.BR);

/** Workgroup bytes of a query-side tile (key and value tiles, key words, the splits' m and l). */
export function queryTileBytes(t: QueryTile, dim: number): number {
  return tileChunks(t, dim) * 16 + t.BC * 4 + (t.KS > 1 ? t.BR * t.KS * 8 : 0) + 4;
}

/** Odd chunk stride of the value rows in workgroup memory (neighbouring rows in different banks). */
const oddStride = (dim: number) => chunks(dim) + 1 - (chunks(dim) % 2);

/** Workgroup bytes of a key-side tile (value rows, query and dO tiles, per-query words). */
export function keyTileBytes(t: KeyTile, dim: number): number {
  return t.BC * oddStride(dim) * 16 + 2 * t.BQ * chunks(dim) * 16 + t.BQ * 12;
}

const pow2 = (n: number) => Number.isInteger(n) && n >= 1 && (n & (n - 1)) === 0;

function checkQueryTile(op: string, t: QueryTile, dim: number, limit: number): void {
  if (![t.BR, t.KS, t.BC].every(pow2) || t.BC % t.KS !== 0 || t.BR * t.KS > 256) {
    throw new ConfigError(
      `${op}: tile BR ${t.BR}, KS ${t.KS}, BC ${t.BC} (powers of 2, KS | BC, BR·KS <= 256)`,
    );
  }
  const bytes = queryTileBytes(t, dim);
  if (bytes > limit) {
    throw new ConfigError(
      `${op}: tile BR ${t.BR}, KS ${t.KS}, BC ${t.BC} at dim ${dim} needs ${bytes} bytes`,
    );
  }
}

function checkKeyTile(op: string, t: KeyTile, dim: number, limit: number): void {
  if (![t.BC, t.KS, t.BQ].every(pow2) || t.BQ % t.KS !== 0 || t.BC * t.KS > 256) {
    throw new ConfigError(
      `${op}: tile BC ${t.BC}, KS ${t.KS}, BQ ${t.BQ} (powers of 2, KS | BQ, BC·KS <= 256)`,
    );
  }
  const bytes = keyTileBytes(t, dim);
  if (bytes > limit) {
    throw new ConfigError(
      `${op}: tile BC ${t.BC}, KS ${t.KS}, BQ ${t.BQ} at dim ${dim} needs ${bytes} bytes`,
    );
  }
}

const limitOf = (a: TiledAttentionArgs) => a.workgroupBytes ?? ATTENTION_WORKGROUP_BYTES;
const forwardTile = (a: TiledAttentionArgs) => a.tiles?.forward ?? defaultTiles(a.dim).forward;
const backwardQTile = (a: TiledAttentionArgs) => a.tiles?.backwardQ ?? defaultTiles(a.dim).backwardQ;
const backwardKVTile = (a: TiledAttentionArgs) => a.tiles?.backwardKV ?? defaultTiles(a.dim).backwardKV;

/** Template constants of a query-side tile. */
function querySpec(dtype: DType, a: TiledAttentionArgs, t: QueryTile, kind: "forward" | "backward_q") {
  const DV = chunks(a.dim), TILE = tileChunks(t, a.dim);
  const CC = Math.min(DV, Math.floor(TILE / t.BR));
  return {
    ...spec(dtype, a),
    DV,
    TILE,
    VEC: a.dim % 4 === 0,
    HAS_DOUT: kind === "backward_q",
    HAS_O: kind === "backward_q",
    WG: t.BR * t.KS,
    BR: t.BR,
    KS: t.KS,
    BC: t.BC,
    NK: t.BC / t.KS,
    CC,
    NPART: Math.ceil(DV / CC),
  };
}

const QUERY_TILED_FIELDS: ParamLayout = [
  ...SHARED,
  { name: "q_blocks", type: "u32" },
  { name: "bh", type: "u32" },
  { name: "groups", type: "u32" },
];

function queryUniforms(a: TiledAttentionArgs, t: QueryTile, negInf: boolean): Record<string, number> {
  const all = allUniforms(a);
  const qBlocks = Math.ceil(a.seq / t.BR), bh = a.batch * a.heads;
  const out: Record<string, number> = {};
  for (const f of SHARED) out[f.name] = all[f.name as keyof typeof all];
  if (negInf) out.neg_inf = -Infinity;
  return { ...out, q_blocks: qBlocks, bh, groups: qBlocks * bh };
}

/** Tiled forward: the contract of {@link ATTENTION_FORWARD_ROWS} (same bindings, outputs and reference). */
export const ATTENTION_FORWARD: KernelRecord<TiledAttentionArgs> = {
  ...ATTENTION_FORWARD_ROWS,
  name: "attention_forward",
  template: "attention/forward",
  includes: ["attention/shared"],
  params: [...QUERY_TILED_FIELDS, NEG_INF_FIELD],
  check: (inputs, a) => {
    checkQueryTile("attention", forwardTile(a), a.dim, limitOf(a));
    checkArgs("attention", inputs, ["q", "k", "v"], a);
  },
  specialise: ([q], a) => querySpec(q.dtype, a, forwardTile(a), "forward"),
  uniforms: (a) => queryUniforms(a, forwardTile(a), true),
  geometry: (a) => ({ rows: a.dim === 0 || a.seq === 0 ? 0 : queryUniforms(a, forwardTile(a), true).groups }),
};

/** Tiled backward for the queries: the contract of {@link ATTENTION_BACKWARD_Q_ROWS}. */
export const ATTENTION_BACKWARD_Q: KernelRecord<TiledAttentionArgs> = {
  ...ATTENTION_BACKWARD_Q_ROWS,
  name: "attention_backward_q",
  template: "attention/backward_q",
  includes: ["attention/shared"],
  params: QUERY_TILED_FIELDS,
  check: (inputs, a) => {
    checkQueryTile("attention backward", backwardQTile(a), a.dim, limitOf(a));
    checkArgs("attention backward", inputs, ["q", "k", "v", "o", "dout", "lse"], a);
  },
  specialise: ([q], a) => querySpec(q.dtype, a, backwardQTile(a), "backward_q"),
  uniforms: (a) => queryUniforms(a, backwardQTile(a), false),
  geometry: (a) => ({
    rows: a.dim === 0 || a.seq === 0 ? 0 : queryUniforms(a, backwardQTile(a), false).groups,
  }),
};

function keyUniforms(a: TiledAttentionArgs, t: KeyTile): Record<string, number> {
  const all = allUniforms(a);
  const out: Record<string, number> = {};
  for (const f of SHARED) out[f.name] = all[f.name as keyof typeof all];
  const bk = a.batch * a.kvHeads;
  return { ...out, bk, groups: Math.ceil(a.keys / t.BC) * bk };
}

/** Tiled backward for keys and values: the contract of {@link ATTENTION_BACKWARD_KV_ROWS}. */
export const ATTENTION_BACKWARD_KV: KernelRecord<TiledAttentionArgs> = {
  ...ATTENTION_BACKWARD_KV_ROWS,
  name: "attention_backward_kv",
  template: "attention/backward_kv",
  includes: ["attention/shared"],
  params: [...SHARED, { name: "bk", type: "u32" }, { name: "groups", type: "u32" }],
  check: (inputs, a) => {
    checkKeyTile("attention backward", backwardKVTile(a), a.dim, limitOf(a));
    checkArgs("attention backward", inputs, ["q", "k", "v", "dout", "lse", "delta"], a);
  },
  specialise: ([q], a) => {
    const t = backwardKVTile(a);
    return {
      ...spec(q.dtype, a),
      DV: chunks(a.dim),
      VP: oddStride(a.dim),
      VEC: a.dim % 4 === 0,
      HAS_DOUT: true,
      HAS_O: false,
      WG: t.BC * t.KS,
      BC: t.BC,
      KS: t.KS,
      BQ: t.BQ,
      NQ: t.BQ / t.KS,
    };
  },
  uniforms: (a) => keyUniforms(a, backwardKVTile(a)),
  geometry: (a) => ({ rows: a.dim === 0 || a.keys === 0 ? 0 : keyUniforms(a, backwardKVTile(a)).groups }),
};
