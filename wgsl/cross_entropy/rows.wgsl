// Cross-entropy of each row of a logits chunk [rows, n] against its target class, one workgroup per
// row: loss = log Σ exp(x) − x[target] (the maximum subtracted first), 0 where the target is negative
// (ignored). Only this chunk's logits ever exist; the fused loss sums these rows.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read_write> loss: array<${L}>;

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
  if (lid == 0u) {
    if (t < 0) {
      loss[row] = ${L}(0.0);
    } else {
      loss[row] = ${L}(m + log(s) - f32(x[base + u32(t)]));
    }
  }
}
