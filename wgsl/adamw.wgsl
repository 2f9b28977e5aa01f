// One AdamW step over packed parameters (src/backend/kernels/adamw.ts): every op in f32, in torch's order.
// segs holds 5 words per segment: start, end, active, step size (-lr / (1 - beta1^t)) and
// sqrt(1 - beta2^t) as f32 bits. Elements outside active segments copy their inputs through.
@group(0) @binding(1) var<storage, read> param: array<${T}>;
@group(0) @binding(2) var<storage, read> grad: array<${T}>;
@group(0) @binding(3) var<storage, read> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read> segs: array<u32>;
@group(0) @binding(6) var<storage, read_write> param_out: array<${T}>;
@group(0) @binding(7) var<storage, read_write> exp_avg_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq_out: array<f32>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.n) {
    return;
  }
  // The last segment starting at or before i (segments are sorted by start).
  var lo = 0u;
  var hi = p.segments;
  while (hi - lo > 1u) {
    let mid = (lo + hi) / 2u;
    if (segs[mid * 5u] <= i) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  let s = lo * 5u;
  let pi = param[i];
  let m = exp_avg[i];
  let v = exp_avg_sq[i];
  if (p.segments == 0u || i < segs[s] || i >= segs[s + 1u] || segs[s + 2u] == 0u) {
    param_out[i] = pi;
    exp_avg_out[i] = m;
    exp_avg_sq_out[i] = v;
    return;
  }
  let step_size = bitcast<f32>(segs[s + 3u]);
  let bias2_sqrt = bitcast<f32>(segs[s + 4u]);
  let g = f32(grad[i]);
  var decayed = f32(pi);
  if (p.use_decay != 0u) {
    decayed = decayed * p.decay;
  }
  let m1 = m + (g - m) * p.one_minus_beta1;
  let v1 = v * p.beta2 + (g * p.one_minus_beta2) * g;
  let denom = sqrt(v1) / bias2_sqrt + p.eps;
  param_out[i] = ${T}(decayed + (m1 * step_size) / denom);
  exp_avg_out[i] = m1;
  exp_avg_sq_out[i] = v1;
}
