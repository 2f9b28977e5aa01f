// The first half of argmax over a long row (a vocabulary of 10^5 logits): row r of x [rows, n] is cut
// into `groups` chunks of `chunk` values, one workgroup each, and each writes its chunk's largest value
// and that value's index (the first on ties; −1 when the chunk holds only NaN) as two f32s into
// part[r, chunk, 0..1]. wgsl/argmax.wgsl with PAIRS then picks the row's winner from the pairs. One
// workgroup per row would scan 10^5 values 256 lanes at a time: ~0.2 ms on the H200 for 128,256.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;

var<workgroup> best_v: array<f32, ${WG}>;
var<workgroup> best_i: array<u32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let gid = flat_group(wid, nwg);
  if (gid >= p.rows * p.groups) {
    return;
  }
  let row = gid / p.groups;
  let lo = (gid % p.groups) * p.chunk;
  let hi = min(p.n, lo + p.chunk);
  let base = row * p.n;
  var v = p.neg_inf;
  var i = 0xffffffffu;
  for (var j = lo + lid; j < hi; j += ${WG}u) {
    let xj = f32(x[base + j]);
    // Strictly greater: within a slice the earlier index wins ties. NaN never wins; −∞ only when first.
    if (xj > v || (i == 0xffffffffu && xj == v)) {
      v = xj;
      i = j;
    }
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
    part[2u * gid] = best_v[0];
    part[2u * gid + 1u] = select(f32(best_i[0]), -1.0, best_i[0] == 0xffffffffu);
  }
}
