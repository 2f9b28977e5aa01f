// Causal attention forward, FlashAttention-2 style: one workgroup per (block of BR query rows, head,
// batch). Key and value rows come in tiles of BC, staged in workgroup memory once for all rows of the
// block; each query row belongs to KS invocations that split every tile's keys between them (NK each),
// with q, the output accumulator and the tile's scores in registers (named variables, every loop over
// them unrolled by the template). Online softmax: a running maximum m and sum l per invocation, the
// accumulator rescaled once per tile; at the end the KS partial results of a row are merged through
// workgroup memory. Tiles past the block's last position (above the diagonal) and before the window of
// its first row are never visited. Writes the output row and its log-sum-exp, all the backward keeps. A
// row that sees no key at all (padding) gets what transformers' eager path gives it: uniform weights
// over every key, marked by a log-sum-exp of +inf.
//#if VEC
@group(0) @binding(1) var<storage, read> q: array<vec4<${T}>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<${T}>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<${T}>>;
//#else
@group(0) @binding(1) var<storage, read> q: array<${T}>;
@group(0) @binding(2) var<storage, read> k: array<${T}>;
@group(0) @binding(3) var<storage, read> v: array<${T}>;
//#end
@group(0) @binding(4) var<storage, read> kmask: array<u32>;
//#if VEC
@group(0) @binding(5) var<storage, read_write> o: array<vec4<${T}>>;
//#else
@group(0) @binding(5) var<storage, read_write> o: array<${T}>;
//#end
@group(0) @binding(6) var<storage, read_write> lse: array<${L}>;

// The key tile's chunks, then the value tile's (BC rows of DV chunks each); reused to merge the splits.
var<workgroup> tile: array<vec4<f32>, ${TILE}>;
var<workgroup> kw: array<u32, ${BC}>;
//#if KS > 1
var<workgroup> ml: array<vec2<f32>, ${WG}>;
//#end

fn store_o(row: u32, c: u32, x: vec4<f32>) {
//#if VEC
  o[row * ${DV}u + c] = vec4<${T}>(x);
//#else
  let at = row * ${D}u + c * 4u;
  if (c * 4u < ${D}u) {
    o[at] = ${T}(x.x);
  }
  if (c * 4u + 1u < ${D}u) {
    o[at + 1u] = ${T}(x.y);
  }
  if (c * 4u + 2u < ${D}u) {
    o[at + 2u] = ${T}(x.z);
  }
  if (c * 4u + 3u < ${D}u) {
    o[at + 3u] = ${T}(x.w);
  }
//#end
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let wg = flat_group(wid, nwg);
  if (wg >= p.groups) {
    return;
  }
  // The blocks nearest the end of the sequence see the most keys: they go first.
  let bh = wg % p.bh;
  let qb = p.q_blocks - 1u - wg / p.bh;
  let h = bh % p.heads;
  let b = bh / p.heads;
  let r = lid % ${BR}u;
  let sp = lid / ${BR}u;
  let i0 = qb * ${BR}u;
  // Invocations past the last row work on a copy of it and write nothing.
  let i = min(i0 + r, p.seq - 1u);
  let row = bh * p.seq + i;
  let kv0 = (b * p.kv_heads + h / (p.heads / p.kv_heads)) * p.keys;
  let past = p.keys - p.seq;
  let qa = past + i;
  let qscale = p.scale * LOG2E;
//#for c in 0..DV
  let q_${c} = chunk_q(row, ${c}u) * qscale;
  var acc_${c} = vec4<f32>(0.0);
//#end
  var m = p.neg_inf;
  var l = 0.0;
  let lo = first_key(past + i0);
  let hi = past + min(i0 + ${BR}u, p.seq);
  // This invocation's keys of a tile: NK consecutive ones from sp · NK.
  let kb = sp * ${NK * DV}u;
  for (var j0 = lo; j0 < hi; j0 += ${BC}u) {
    workgroupBarrier();
    for (var e = lid; e < ${BC * DV}u; e += ${WG}u) {
      let j = j0 + e / ${DV}u;
      let c = e % ${DV}u;
      var kc = vec4<f32>(0.0);
      var vc = vec4<f32>(0.0);
      if (j < p.keys) {
        kc = chunk_k(kv0 + j, c);
        vc = chunk_v(kv0 + j, c);
      }
      tile[e] = kc;
      tile[${BC * DV}u + e] = vc;
    }
    for (var e = lid; e < ${BC}u; e += ${WG}u) {
      kw[e] = key_word(b, j0 + e);
    }
    workgroupBarrier();
    var mt = m;
//#for u in 0..NK
    var s_${u} = 0.0;
//#for c in 0..DV
    s_${u} += dot(q_${c}, tile[kb + ${u * DV + c}u]);
//#end
    s_${u} = select(p.neg_inf, s_${u}, kw[sp * ${NK}u + ${u}u] == 3u && in_reach(qa, j0 + sp * ${NK}u + ${u}u));
    mt = max(mt, s_${u});
//#end
    if (mt > p.neg_inf) {
      let f = select(0.0, exp2(m - mt), m > p.neg_inf);
      l *= f;
//#for c in 0..DV
      acc_${c} *= f;
//#end
//#for u in 0..NK
      {
        let pw = select(0.0, exp2(s_${u} - mt), s_${u} > p.neg_inf);
        l += pw;
//#for c in 0..DV
        acc_${c} += pw * tile[${BC * DV}u + kb + ${u * DV + c}u];
//#end
      }
//#end
      m = mt;
    }
  }
//#if KS > 1
  // Merge the KS partial results of each row into its split-0 invocation.
  ml[lid] = vec2<f32>(m, l);
  workgroupBarrier();
  var mm = p.neg_inf;
//#for s in 0..KS
  mm = max(mm, ml[r + ${s * BR}u].x);
//#end
  var ll = 0.0;
//#for s in 0..KS
  {
    let e = ml[r + ${s * BR}u];
    ll += select(0.0, e.y * exp2(e.x - mm), e.x > p.neg_inf);
  }
//#end
  let f = select(0.0, exp2(m - mm), m > p.neg_inf);
//#for c in 0..DV
  acc_${c} *= f;
//#end
//#for s in 1..KS
//#for part in 0..NPART
  workgroupBarrier();
  if (sp == ${s}u) {
//#for c in part * CC..(part + 1) * CC
//#if c < DV
    tile[r * ${CC}u + ${c - part * CC}u] = acc_${c};
//#end
//#end
  }
  workgroupBarrier();
  if (sp == 0u) {
//#for c in part * CC..(part + 1) * CC
//#if c < DV
    acc_${c} += tile[r * ${CC}u + ${c - part * CC}u];
//#end
//#end
  }
//#end
//#end
  m = mm;
  l = ll;
//#end
  if (sp != 0u || i0 + r >= p.seq) {
    return;
  }
  if (l > 0.0) {
    let inv = 1.0 / l;
//#for c in 0..DV
    store_o(row, ${c}u, acc_${c} * inv);
//#end
    lse[row] = ${L}((m + log2(l)) * LN2);
  } else {
    // No visible key: the mean of every value row.
//#for c in 0..DV
    acc_${c} = vec4<f32>(0.0);
//#end
    for (var j = 0u; j < p.keys; j++) {
//#for c in 0..DV
      acc_${c} += chunk_v(kv0 + j, ${c}u);
//#end
    }
    let inv = 1.0 / f32(p.keys);
//#for c in 0..DV
    store_o(row, ${c}u, acc_${c} * inv);
//#end
    lse[row] = ${L}(-p.neg_inf);
  }
}
