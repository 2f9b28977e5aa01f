// Greedy decoding's choice: ids[r] = the index of the largest value of row r of x [rows, n], the first
// one on ties (torch.argmax's rule), stored as an f32 (exact below 2^24, far above any vocabulary).
// One workgroup per row: each invocation scans a strided slice, then a tree reduction keeps the larger
// value, and the smaller index between equal values. With PAIRS, x holds [rows, n] (value, index) pairs
// of chunks (wgsl/argmax_partial.wgsl), and the winner is the pairs' best index.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> ids: array<f32>;

var<workgroup> best_v: array<f32, ${WG}>;
var<workgroup> best_i: array<u32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
  let base = row * p.n;
  var v = p.neg_inf;
  var i = 0xffffffffu;
  for (var j = lid; j < p.n; j += ${WG}u) {
//#if PAIRS
    // A chunk's (value, index) from wgsl/argmax_partial.wgsl; chunks come in index order, so the
    // strictly-greater rule below still keeps the first index on ties. A chunk of NaN only (−1) is skipped.
    let xj = f32(x[2u * (base + j)]);
    let at = f32(x[2u * (base + j) + 1u]);
    if (at >= 0.0 && (xj > v || (i == 0xffffffffu && xj == v))) {
      v = xj;
      i = u32(at);
    }
//#else
    let xj = f32(x[base + j]);
    // Strictly greater: within a slice the earlier index wins ties. NaN never wins; −∞ only when first.
    if (xj > v || (i == 0xffffffffu && xj == v)) {
      v = xj;
      i = j;
    }
//#end
  }
  best_v[lid] = v;
  best_i[lid] = i;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let ov = best_v[lid + s];
      let oi = best_i[lid + s];
      let mv = best_v[lid];
      let mi = best_i[lid];
      if (oi != 0xffffffffu && (mi == 0xffffffffu || ov > mv || (ov == mv && oi < mi))) {
        best_v[lid] = ov;
        best_i[lid] = oi;
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    ids[row] = f32(select(best_i[0], 0u, best_i[0] == 0xffffffffu));
  }
}
