// Partial sums of squares: workgroup c reduces x[c * chunk .. (c + 1) * chunk) into partial[c] (f32).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;

var<workgroup> part: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let c = flat_group(wid, nwg);
  if (c >= p.groups) {
    return;
  }
  let start = c * p.chunk;
  let end = min(p.n, start + p.chunk);
  var acc = 0.0;
  for (var i = start + lid; i < end; i += ${WG}u) {
    let v = f32(x[i]);
    acc += v * v;
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
    partial[c] = part[0];
  }
}
