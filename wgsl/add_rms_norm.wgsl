// A residual add fused with the RMSNorm after it, per row of [rows, n]: s = x + res (stored as the new
// residual stream), y = w · T(s / sqrt(mean(s²) + eps)) (the normalised value rounded to the storage
// type before the scale, as transformers' LlamaRMSNorm casts back before multiplying). One workgroup per
// row; a decoding step runs one of these per norm instead of an add and six element-wise dispatches.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> res: array<${T}>;
@group(0) @binding(3) var<storage, read> w: array<${T}>;
@group(0) @binding(4) var<storage, read_write> s_out: array<${T}>;
@group(0) @binding(5) var<storage, read_write> y: array<${T}>;

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
    let s = f32(${T}(f32(x[base + j]) + f32(res[base + j])));
    ss += s * s;
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
    let s = ${T}(f32(x[base + j]) + f32(res[base + j]));
    s_out[base + j] = s;
    y[base + j] = ${T}(f32(w[j]) * f32(${T}(f32(s) * r)));
  }
}
