// RMSNorm backward for the input, per row of [rows, n] (src/backend/kernels/rms_norm.ts): with
// gw = T(g · w) and r = (mean(x²) + eps)^-½ recomputed in f32 (the forward keeps nothing but x),
// dx = T(r · gw − x · (Σ gw · x) · r³ / n). Both row sums come from one pass; r is written per row
// (f32) for the weight-gradient kernel.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> w: array<${T}>;
@group(0) @binding(3) var<storage, read> g: array<${T}>;
@group(0) @binding(4) var<storage, read_write> dx: array<${T}>;
@group(0) @binding(5) var<storage, read_write> r_out: array<${L}>;

var<workgroup> part_sq: array<f32, ${WG}>;
var<workgroup> part_gx: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
  let base = row * p.n;
  var ss = 0.0;
  var sgx = 0.0;
  for (var j = lid; j < p.n; j += ${WG}u) {
    let v = f32(x[base + j]);
    let gw = f32(${T}(f32(g[base + j]) * f32(w[j])));
    ss += v * v;
    sgx += gw * v;
  }
  part_sq[lid] = ss;
  part_gx[lid] = sgx;
  workgroupBarrier();
  for (var st = ${WG / 2}u; st > 0u; st = st >> 1u) {
    if (lid < st) {
      part_sq[lid] = part_sq[lid] + part_sq[lid + st];
      part_gx[lid] = part_gx[lid] + part_gx[lid + st];
    }
    workgroupBarrier();
  }
  let r = inverseSqrt(part_sq[0] / f32(p.n) + p.eps);
  let c = part_gx[0] * (r * r * r / f32(p.n));
  for (var j = lid; j < p.n; j += ${WG}u) {
    let gw = f32(${T}(f32(g[base + j]) * f32(w[j])));
    dx[base + j] = ${T}(gw * r - f32(x[base + j]) * c);
  }
  if (lid == 0u) {
    r_out[row] = ${L}(r);
  }
}
