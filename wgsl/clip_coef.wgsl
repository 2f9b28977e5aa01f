// One workgroup: total = sqrt(sum of the partial sums), coef = min(1, max_norm / (total + 1e-6)).
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> total: array<f32>;
@group(0) @binding(3) var<storage, read_write> coef: array<f32>;

var<workgroup> part: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var i = lid; i < p.n; i += ${WG}u) {
    acc += partial[i];
  }
  part[lid] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      part[lid] += part[lid + s];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let t = sqrt(part[0]);
    total[0] = t;
    coef[0] = min(1.0, p.max_norm / (t + 1e-6));
  }
}
