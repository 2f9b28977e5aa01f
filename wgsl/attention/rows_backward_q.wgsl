// Causal attention backward for the queries, one workgroup per query row: delta = dO · O (the softmax
// backward's row term), then the visible keys in tiles of WG, each invocation recomputing its key's
// weight p = exp(s - lse) from the saved log-sum-exp, dp = dO · v and ds = p (dp - delta);
// dq = scale · Σ ds k. Writes dq and delta (the key/value kernel reads delta).
@group(0) @binding(1) var<storage, read> q: array<${T}>;
@group(0) @binding(2) var<storage, read> k: array<${T}>;
@group(0) @binding(3) var<storage, read> v: array<${T}>;
@group(0) @binding(4) var<storage, read> o: array<${T}>;
@group(0) @binding(5) var<storage, read> dout: array<${T}>;
@group(0) @binding(6) var<storage, read> lse: array<${L}>;
@group(0) @binding(7) var<storage, read> kmask: array<u32>;
@group(0) @binding(8) var<storage, read_write> dq: array<${T}>;
@group(0) @binding(9) var<storage, read_write> delta: array<${L}>;

var<workgroup> qs: array<f32, ${D}>;
var<workgroup> dos: array<f32, ${D}>;
var<workgroup> acc: array<f32, ${D}>;
var<workgroup> pt: array<f32, ${WG}>;
var<workgroup> row_lse: f32;

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
  var dd = 0.0;
  for (var d = lid; d < ${D}u; d += ${WG}u) {
    qs[d] = f32(q[row * ${D}u + d]) * p.scale;
    let g = f32(dout[row * ${D}u + d]);
    dos[d] = g;
    acc[d] = 0.0;
    dd += g * f32(o[row * ${D}u + d]);
  }
  if (lid == 0u) {
    row_lse = f32(lse[row]);
  }
  part[lid] = dd;
  let dl = reduce_part(lid, false);
  // A row that saw no key (lse = +inf) had uniform weights over all keys with scores held at one value.
  let lse_row = workgroupUniformLoad(&row_lse);
  let full = lse_row > 3.0e38;
  var lo = first_key(qa);
  var hi = qa + 1u;
  var lse_eff = lse_row;
  if (full) {
    lo = 0u;
    hi = p.keys;
    lse_eff = log(f32(p.keys));
  }
  for (var t0 = lo; t0 < hi; t0 += ${WG}u) {
    let j = t0 + lid;
    var ds = 0.0;
    if (j < hi && (full || key_visible(b, qa, j))) {
      var s = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < ${D}u; d++) {
        s += qs[d] * f32(k[kvbase + j * ${D}u + d]);
        dp += dos[d] * f32(v[kvbase + j * ${D}u + d]);
      }
      if (full) {
        s = 0.0;
      }
      ds = exp(s - lse_eff) * (dp - dl);
    }
    pt[lid] = ds;
    workgroupBarrier();
    let tile = min(${WG}u, hi - t0);
    for (var d = lid; d < ${D}u; d += ${WG}u) {
      var a = acc[d];
      for (var jj = 0u; jj < tile; jj++) {
        a += pt[jj] * f32(k[kvbase + (t0 + jj) * ${D}u + d]);
      }
      acc[d] = a;
    }
    workgroupBarrier();
  }
  for (var d = lid; d < ${D}u; d += ${WG}u) {
    dq[row * ${D}u + d] = ${T}(acc[d] * p.scale);
  }
  if (lid == 0u) {
    delta[row] = ${L}(dl);
  }
}
