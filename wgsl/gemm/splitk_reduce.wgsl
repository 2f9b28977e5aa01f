// Sums the partial products of a split-K GEMM: out[i] = alpha · sum over s of part[s · n + i]
// (gemm/splitk_sum.wgsl).
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let r = sum_slices(wid, nwg, lid);
  if (r.owner) {
    y[r.i] = ${T}(r.acc * p.alpha);
  }
}
