// RMSNorm backward for the weight (src/backend/kernels/rms_norm.ts): dw[j] = Σ_rows g · T(x · r), with r
// the per-row factor the input-gradient kernel wrote. One invocation per column; neighbouring invocations
// read neighbouring addresses. Only runs when the norm's weight is trained (LoRA keeps it frozen).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> g: array<${T}>;
@group(0) @binding(3) var<storage, read> r: array<${L}>;
@group(0) @binding(4) var<storage, read_write> dw: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let j = flat_index(wid, nwg, lid, ${WG}u);
  if (j >= p.n) {
    return;
  }
  var acc = 0.0;
  var at = j;
  for (var i = 0u; i < p.rows; i++) {
    acc += f32(g[at]) * f32(${T}(f32(x[at]) * f32(r[i])));
    at += p.n;
  }
  dw[j] = ${T}(acc);
}
