// out[i] = x[i] * mul + add.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i < p.n) {
    // Adding a zero would turn -0 into +0; copies (detach, reshape) must be exact.
    let v = f32(x[i]) * p.mul;
    y[i] = ${T}(select(v + p.add, v, p.add == 0.0));
  }
}
