// out[i] = x[i, idx[i]] for [rows, n], or 0 where idx[i] < 0.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> idx: array<i32>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.rows) {
    return;
  }
  let c = idx[i];
  if (c < 0) {
    y[i] = ${T}(0.0);
  } else {
    y[i] = x[i * p.n + u32(c)];
  }
}
