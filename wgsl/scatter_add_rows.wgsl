// out[r, j] = sum of src[s, j] over the source rows s with ids[s] = r. The host sorts the ids into a
// compressed list (csr[r] .. csr[r + 1] index csr[rows + 1 + ...] = source rows), so each invocation
// owns one output element and no float atomics are needed.
@group(0) @binding(1) var<storage, read> src: array<${T}>;
@group(0) @binding(2) var<storage, read> csr: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flat_index(wid, nwg, lid, ${WG}u);
  if (e >= p.rows * p.dim) {
    return;
  }
  let r = e / p.dim;
  let j = e % p.dim;
  var acc = 0.0;
  for (var q = csr[r]; q < csr[r + 1u]; q++) {
    acc += f32(src[csr[p.rows + 1u + q] * p.dim + j]);
  }
  y[e] = ${T}(acc);
}
