// The backward of y = silu(gate) · up in one pass (src/backend/kernels/silu_mul.ts): with σ the sigmoid,
// dgate = T(T(g · up) · T(σ (1 + gate (1 − σ)))) and dup = T(g · T(silu(gate))), rounded between steps
// as the composed backward's element-wise ops round (no-ops for f32).
@group(0) @binding(1) var<storage, read> gate: array<${T}>;
@group(0) @binding(2) var<storage, read> up: array<${T}>;
@group(0) @binding(3) var<storage, read> g: array<${T}>;
@group(0) @binding(4) var<storage, read_write> dgate: array<${T}>;
@group(0) @binding(5) var<storage, read_write> dup: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.n) {
    return;
  }
  let v = f32(gate[i]);
  let gi = f32(g[i]);
  let s = 1.0 / (1.0 + exp(-v));
  let ds = f32(${T}(s * (1.0 + v * (1.0 - s))));
  dgate[i] = ${T}(f32(${T}(gi * f32(up[i]))) * ds);
  dup[i] = ${T}(gi * f32(${T}(v * s)));
}
