// GEMV-shaped product for decoding: y[m, n] = x[m, k] · w[n, k]ᵀ (+ res[m, n] with RES, the residual add
// of o_proj or down_proj fused into it) with m = M <= 8 rows, where reading the weight once is the whole
// cost. A workgroup owns ${WG / LANES} output columns of LANES invocations each; an invocation strides the
// column's weight row (with VEC as vec4 loads: k is a multiple of 4) and keeps one accumulator per input
// row, written out as separate variables (//#for). LANES grows with k so that each invocation issues only
// a few loads, all in flight together (src/backend/kernels/gemv.ts, gemvLayout). The partial sums of all
// M rows are reduced together (one tree), not one row after another. With LORA a LoRA adapter's term
// scale · t · lbᵀ joins the sums (t = x Aᵀ [m, r] from an earlier GEMV, lb = B [n, r]), spread over the
// column's invocations like the weight row, as the fused LoRA GEMM adds it into its accumulators.
//#if VEC
alias VS = vec4<${T}>;
alias VF = vec4<f32>;
//#else
alias VS = ${T};
alias VF = f32;
//#end
@group(0) @binding(1) var<storage, read> x: array<VS>;
@group(0) @binding(2) var<storage, read> w: array<VS>;
@group(0) @binding(3) var<storage, read> res: array<${T}>;
@group(0) @binding(4) var<storage, read> t: array<${T}>;
@group(0) @binding(5) var<storage, read> lb: array<${T}>;
@group(0) @binding(6) var<storage, read_write> y: array<${T}>;

var<workgroup> red: array<f32, ${WG * M}>;

fn hsum(v: VF) -> f32 {
//#if VEC
  return (v.x + v.y) + (v.z + v.w);
//#else
  return v;
//#end
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let group = flat_group(wid, nwg);
  let lane = lid % ${LANES}u;
  let col = group * ${WG / LANES}u + lid / ${LANES}u;
  // Columns past the end still join every barrier; they read column n − 1 and write nothing.
  let c = min(col, p.n - 1u);
//#if VEC
  let kv = p.k / 4u;
//#else
  let kv = p.k;
//#end
//#for r in 0..M
  var acc${r} = VF(0.0);
//#end
  for (var i = lane; i < kv; i += ${LANES}u) {
    let wv = VF(w[c * kv + i]);
//#for r in 0..M
    acc${r} += VF(x[${r}u * kv + i]) * wv;
//#end
  }
//#for r in 0..M
  var lo${r} = 0.0;
//#end
//#if LORA
  for (var i = lane; i < p.r; i += ${LANES}u) {
    let bv = p.scale * f32(lb[c * p.r + i]);
//#for r in 0..M
    lo${r} += f32(t[${r}u * p.r + i]) * bv;
//#end
  }
//#end
//#for r in 0..M
  red[${r * WG}u + lid] = hsum(acc${r}) + lo${r};
//#end
  workgroupBarrier();
  for (var s = ${LANES / 2}u; s > 0u; s = s >> 1u) {
    if (lane < s) {
//#for r in 0..M
      red[${r * WG}u + lid] += red[${r * WG}u + lid + s];
//#end
    }
    workgroupBarrier();
  }
  if (lane == 0u && col < p.n) {
//#for r in 0..M
//#if RES
    y[${r}u * p.n + col] = ${T}(f32(${T}(red[${r * WG}u + lid])) + f32(res[${r}u * p.n + col]));
//#else
    y[${r}u * p.n + col] = ${T}(red[${r * WG}u + lid]);
//#end
//#end
  }
}
