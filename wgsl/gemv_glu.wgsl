// The SwiGLU half of a feed-forward block for decoding: y[m, n] = silu(x · gᵀ) · (x · uᵀ) for x [m, k]
// with m = M <= 8 rows and gate and up weights g, u [n, k], in one pass over both weights (the layout
// of wgsl/gemv.wgsl: 32 lanes per output column, one accumulator pair per input row). The gate and up
// products are rounded to the storage type before the activation, as separate layers would store them.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> g: array<${T}>;
@group(0) @binding(3) var<storage, read> u: array<${T}>;
@group(0) @binding(4) var<storage, read_write> y: array<${T}>;

var<workgroup> part_g: array<f32, ${WG}>;
var<workgroup> part_u: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let group = flat_group(wid, nwg);
  let lane = lid % 32u;
  let col = group * ${WG / 32}u + lid / 32u;
  let c = min(col, p.n - 1u);
//#for r in 0..M
  var ag${r} = 0.0;
  var au${r} = 0.0;
//#end
  for (var i = lane; i < p.k; i += 32u) {
    let gv = f32(g[c * p.k + i]);
    let uv = f32(u[c * p.k + i]);
//#for r in 0..M
    let x${r} = f32(x[${r}u * p.k + i]);
    ag${r} += x${r} * gv;
    au${r} += x${r} * uv;
//#end
  }
//#for r in 0..M
  part_g[lid] = ag${r};
  part_u[lid] = au${r};
  workgroupBarrier();
  for (var s = 16u; s > 0u; s = s >> 1u) {
    if (lane < s) {
      part_g[lid] = part_g[lid] + part_g[lid + s];
      part_u[lid] = part_u[lid] + part_u[lid + s];
    }
    workgroupBarrier();
  }
  if (lane == 0u && col < p.n) {
    let gs = f32(${T}(part_g[lid]));
    let act = f32(${T}(gs / (1.0 + exp(-gs))));
    y[${r}u * p.n + col] = ${T}(act * f32(${T}(part_u[lid])));
  }
  workgroupBarrier();
//#end
}
