// GEMV-shaped product for decoding: y[m, n] = x[m, k] · w[n, k]ᵀ with m = M <= 8 rows, where reading the
// weight once is the whole cost. A workgroup owns ${WG / 32} output columns with 32 lanes each; a lane
// strides the column's weight row (32 consecutive elements per step across the lanes, so the loads
// coalesce) and keeps one accumulator per input row, written out as separate variables (//#for).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> w: array<${T}>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

var<workgroup> part: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let group = flat_group(wid, nwg);
  let lane = lid % 32u;
  let col = group * ${WG / 32}u + lid / 32u;
  // Columns past the end still join every barrier; they read column n − 1 and write nothing.
  let c = min(col, p.n - 1u);
//#for r in 0..M
  var acc${r} = 0.0;
//#end
  for (var i = lane; i < p.k; i += 32u) {
    let wv = f32(w[c * p.k + i]);
//#for r in 0..M
    acc${r} += f32(x[${r}u * p.k + i]) * wv;
//#end
  }
//#for r in 0..M
  part[lid] = acc${r};
  workgroupBarrier();
  for (var s = 16u; s > 0u; s = s >> 1u) {
    if (lane < s) {
      part[lid] = part[lid] + part[lid + s];
    }
    workgroupBarrier();
  }
  if (lane == 0u && col < p.n) {
    y[${r}u * p.n + col] = ${T}(part[lid]);
  }
  workgroupBarrier();
//#end
}
