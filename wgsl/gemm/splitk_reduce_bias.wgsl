// Sums the partial products of a split-K GEMM with a bias epilogue:
// out[i] = alpha · sum over s of part[s · n + i] + bias[i mod cols] (the slices leave the bias out).
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<${T}>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.n) {
    return;
  }
  var acc = 0.0;
  for (var s = 0u; s < p.splits; s++) {
    acc += part[s * p.n + i];
  }
  y[i] = ${T}(acc * p.alpha + f32(bias[i % p.cols]));
}
