// Causal attention forward, one workgroup per query row (batch, head, i): the visible keys are read in
// tiles of WG, one key per invocation, with an online softmax (running maximum m and sum l, the output
// accumulator rescaled by exp(m_old - m_new) whenever the maximum grows), so no score row is stored.
// Writes the output row and its log-sum-exp, all the backward keeps. A row that sees no key at all
// (padding) gets what transformers' eager path gives it: uniform weights over every key, marked by a
// log-sum-exp of +inf.
@group(0) @binding(1) var<storage, read> q: array<${T}>;
@group(0) @binding(2) var<storage, read> k: array<${T}>;
@group(0) @binding(3) var<storage, read> v: array<${T}>;
@group(0) @binding(4) var<storage, read> kmask: array<u32>;
@group(0) @binding(5) var<storage, read_write> o: array<${T}>;
@group(0) @binding(6) var<storage, read_write> lse: array<${L}>;

var<workgroup> qs: array<f32, ${D}>;
var<workgroup> acc: array<f32, ${D}>;
var<workgroup> pt: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
  let i = row % p.seq;
  let bh = row / p.seq;
  let h = bh % p.heads;
  let b = bh / p.heads;
  let kvbase = (b * p.kv_heads + h / (p.heads / p.kv_heads)) * p.keys * ${D}u;
  let qa = p.keys - p.seq + i;
  for (var d = lid; d < ${D}u; d += ${WG}u) {
    qs[d] = f32(q[row * ${D}u + d]) * p.scale;
    acc[d] = 0.0;
  }
  workgroupBarrier();
  let lo = first_key(qa);
  let hi = qa + 1u;
  var m = p.neg_inf;
  var l = 0.0;
  for (var t0 = lo; t0 < hi; t0 += ${WG}u) {
    let j = t0 + lid;
    var s = p.neg_inf;
    if (j < hi && key_visible(b, qa, j)) {
      s = 0.0;
      for (var d = 0u; d < ${D}u; d++) {
        s += qs[d] * f32(k[kvbase + j * ${D}u + d]);
      }
    }
    part[lid] = s;
    let mn = max(m, reduce_part(lid, true));
    let pj = select(0.0, exp(s - mn), s > p.neg_inf);
    pt[lid] = pj;
    part[lid] = pj;
    let ls = reduce_part(lid, false);
    let c = select(0.0, exp(m - mn), m > p.neg_inf);
    l = l * c + ls;
    let tile = min(${WG}u, hi - t0);
    for (var d = lid; d < ${D}u; d += ${WG}u) {
      var a = acc[d] * c;
      for (var jj = 0u; jj < tile; jj++) {
        a += pt[jj] * f32(v[kvbase + (t0 + jj) * ${D}u + d]);
      }
      acc[d] = a;
    }
    m = mn;
    workgroupBarrier();
  }
  if (l > 0.0) {
    for (var d = lid; d < ${D}u; d += ${WG}u) {
      o[row * ${D}u + d] = ${T}(acc[d] / l);
    }
    if (lid == 0u) {
      lse[row] = ${L}(m + log(l));
    }
  } else {
    for (var d = lid; d < ${D}u; d += ${WG}u) {
      var a = 0.0;
      for (var j = 0u; j < p.keys; j++) {
        a += f32(v[kvbase + j * ${D}u + d]);
      }
      o[row * ${D}u + d] = ${T}(a / f32(p.keys));
    }
    if (lid == 0u) {
      lse[row] = ${L}(-p.neg_inf);
    }
  }
}
