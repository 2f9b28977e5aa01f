// The inverse of pick: out[i, j] = src[i] where j = idx[i], else 0 ([rows, n]).
@group(0) @binding(1) var<storage, read> src: array<${T}>;
@group(0) @binding(2) var<storage, read> idx: array<i32>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flat_index(wid, nwg, lid, ${WG}u);
  if (e >= p.rows * p.n) {
    return;
  }
  let i = e / p.n;
  let j = i32(e % p.n);
  y[e] = select(${T}(0.0), src[i], idx[i] == j);
}
