// RMSNorm forward per row of [rows, n] (src/backend/kernels/rms_norm.ts): y = T(w · T(x · r)) with
// r = (mean(x²) + eps)^-½ in f32, the normalised value rounded to the storage type before the scale as
// transformers' LlamaRMSNorm casts back before multiplying (a no-op for f32). One workgroup per row
// replaces the seven element-wise dispatches of the composition and keeps no intermediate.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> w: array<${T}>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

var<workgroup> part: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
  let base = row * p.n;
  var ss = 0.0;
  for (var j = lid; j < p.n; j += ${WG}u) {
    let v = f32(x[base + j]);
    ss += v * v;
  }
  part[lid] = ss;
  workgroupBarrier();
  for (var st = ${WG / 2}u; st > 0u; st = st >> 1u) {
    if (lid < st) {
      part[lid] = part[lid] + part[lid + st];
    }
    workgroupBarrier();
  }
  let r = inverseSqrt(part[0] / f32(p.n) + p.eps);
  for (var j = lid; j < p.n; j += ${WG}u) {
    y[base + j] = ${T}(f32(w[j]) * f32(${T}(f32(x[base + j]) * r)));
  }
}
