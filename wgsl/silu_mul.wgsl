// SwiGLU's product y = T(T(silu(gate)) · up) element-wise (src/backend/kernels/silu_mul.ts), rounding
// the SiLU to the storage type as the composed silu-then-mul does (a no-op for f32).
@group(0) @binding(1) var<storage, read> gate: array<${T}>;
@group(0) @binding(2) var<storage, read> up: array<${T}>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.n) {
    return;
  }
  let v = f32(gate[i]);
  let s = f32(${T}(v * (1.0 / (1.0 + exp(-v)))));
  y[i] = ${T}(s * f32(up[i]));
}
