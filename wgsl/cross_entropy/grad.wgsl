// Gradient of the fused loss for a logits chunk [rows, n]: (softmax(x) − onehot(target)) · g · inv_count,
// g the loss's incoming gradient (one element on the device, so nothing is read back), 0 on ignored
// rows. One workgroup per row; the row's softmax is recomputed from the logits.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> g: array<${L}>;
@group(0) @binding(3) var<storage, read> targets: array<i32>;
@group(0) @binding(4) var<storage, read_write> dx: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
  let t = targets[row];
  let base = row * p.n;
  var m = p.neg_inf;
  for (var j = lid; j < p.n; j += ${WG}u) {
    m = max(m, f32(x[base + j]));
  }
  part[lid] = m;
  m = reduce_part(lid, true);
  var s = 0.0;
  for (var j = lid; j < p.n; j += ${WG}u) {
    s += exp(f32(x[base + j]) - m);
  }
  part[lid] = s;
  s = reduce_part(lid, false);
  let f = f32(g[0]) * p.inv_count;
  for (var j = lid; j < p.n; j += ${WG}u) {
    var d = 0.0;
    if (t >= 0) {
      d = exp(f32(x[base + j]) - m) / s;
      if (u32(t) == j) {
        d -= 1.0;
      }
    }
    dx[base + j] = ${T}(d * f);
  }
}
