// Causal attention backward for keys and values, one workgroup per key row (batch, key/value head, j):
// the query rows of every head sharing this key/value head are read in tiles of WG, each invocation
// recomputing its query's weight p = exp(s - lse) and ds = p (dO · v - delta);
// dv = Σ p dO and dk = scale · Σ ds q. Without a padding mask only the queries that can see key j are
// visited (from its own position to the window's end); with one, every query, since a row that sees no
// key spreads its weight over all keys.
@group(0) @binding(1) var<storage, read> q: array<${T}>;
@group(0) @binding(2) var<storage, read> k: array<${T}>;
@group(0) @binding(3) var<storage, read> v: array<${T}>;
@group(0) @binding(4) var<storage, read> dout: array<${T}>;
@group(0) @binding(5) var<storage, read> lse: array<${L}>;
@group(0) @binding(6) var<storage, read> delta: array<${L}>;
@group(0) @binding(7) var<storage, read> kmask: array<u32>;
@group(0) @binding(8) var<storage, read_write> dk: array<${T}>;
@group(0) @binding(9) var<storage, read_write> dv: array<${T}>;

var<workgroup> ks: array<f32, ${D}>;
var<workgroup> vs: array<f32, ${D}>;
var<workgroup> dka: array<f32, ${D}>;
var<workgroup> dva: array<f32, ${D}>;
var<workgroup> pp: array<f32, ${WG}>;
var<workgroup> pd: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.kv_rows) {
    return;
  }
  let j = row % p.keys;
  let bk = row / p.keys;
  let kvh = bk % p.kv_heads;
  let b = bk / p.kv_heads;
  let group = p.heads / p.kv_heads;
  let past = p.keys - p.seq;
  for (var d = lid; d < ${D}u; d += ${WG}u) {
    ks[d] = f32(k[row * ${D}u + d]) * p.scale;
    vs[d] = f32(v[row * ${D}u + d]);
    dka[d] = 0.0;
    dva[d] = 0.0;
  }
  workgroupBarrier();
  // Query rows i in [ilo, ihi) can see key j: position past + i >= j, and inside the window.
  var ilo = 0u;
  var ihi = p.seq;
  if (p.has_mask == 0u) {
    ilo = select(0u, j - past, j > past);
    if (p.window > 0u) {
      ihi = min(p.seq, select(0u, j + p.window - past, j + p.window > past));
    }
  }
  for (var g = 0u; g < group; g++) {
    let qbase = ((b * p.heads + kvh * group + g) * p.seq);
    for (var t0 = ilo; t0 < ihi; t0 += ${WG}u) {
      let i = t0 + lid;
      var pw = 0.0;
      var ds = 0.0;
      if (i < ihi) {
        let qrow = qbase + i;
        let lse_row = f32(lse[qrow]);
        let full = lse_row > 3.0e38;
        if (full || key_visible(b, past + i, j)) {
          var s = 0.0;
          var dp = 0.0;
          for (var d = 0u; d < ${D}u; d++) {
            s += ks[d] * f32(q[qrow * ${D}u + d]);
            dp += vs[d] * f32(dout[qrow * ${D}u + d]);
          }
          var lse_eff = lse_row;
          if (full) {
            s = 0.0;
            lse_eff = log(f32(p.keys));
          }
          pw = exp(s - lse_eff);
          ds = pw * (dp - f32(delta[qrow]));
        }
      }
      pp[lid] = pw;
      pd[lid] = ds;
      workgroupBarrier();
      let tile = min(${WG}u, ihi - t0);
      for (var d = lid; d < ${D}u; d += ${WG}u) {
        var a = dva[d];
        var c = dka[d];
        for (var ii = 0u; ii < tile; ii++) {
          let at = (qbase + t0 + ii) * ${D}u + d;
          a += pp[ii] * f32(dout[at]);
          c += pd[ii] * f32(q[at]);
        }
        dva[d] = a;
        dka[d] = c;
      }
      workgroupBarrier();
    }
  }
  for (var d = lid; d < ${D}u; d += ${WG}u) {
    dk[row * ${D}u + d] = ${T}(dka[d] * p.scale);
    dv[row * ${D}u + d] = ${T}(dva[d]);
  }
}
