// An RMSNorm (with NORM) fused into the GEMVs that read its output, for decoding: with xn = T(nw · T(x / rms(x)))
// per row of x [m, k] (the values wgsl/add_rms_norm.wgsl stores), y = [xn · w0ᵀ | xn · w1ᵀ | xn · w2ᵀ]
// (+ the parts' biases with BIAS), the parts' columns side by side in one [m, n0 + n1 + n2] output: a
// decoder layer's q, k and v projections after its input norm in one dispatch (n1 = n2 = 0 leaves one
// part: a fused qkv weight, or the LM head after the final norm). Every workgroup first reduces the sum
// of squares of all M rows itself (x is a few KB, read from cache), then runs the layout of
// wgsl/gemv.wgsl: ${WG / LANES} output columns of LANES invocations each, vec4 loads with VEC.
// e0, e1, e2 are each part's epilogue operand: its bias with BIAS, or with LORA its LoRA B [n_q, r_q],
// whose term s_q · t · Bᵀ joins the sums (t [m, r0 + r1 + r2]: x̂ times each part's A, side by side, from
// an earlier gemvNorm over the A weights).
//#if VEC
alias VS = vec4<${T}>;
alias VF = vec4<f32>;
//#else
alias VS = ${T};
alias VF = f32;
//#end
@group(0) @binding(1) var<storage, read> x: array<VS>;
@group(0) @binding(2) var<storage, read> nw: array<VS>;
@group(0) @binding(3) var<storage, read> w0: array<VS>;
@group(0) @binding(4) var<storage, read> w1: array<VS>;
@group(0) @binding(5) var<storage, read> w2: array<VS>;
@group(0) @binding(6) var<storage, read> e0: array<${T}>;
@group(0) @binding(7) var<storage, read> e1: array<${T}>;
@group(0) @binding(8) var<storage, read> e2: array<${T}>;
@group(0) @binding(9) var<storage, read> t: array<${T}>;
@group(0) @binding(10) var<storage, read_write> y: array<${T}>;

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
  let n = p.n0 + p.n1 + p.n2;
//#if VEC
  let kv = p.k / 4u;
//#else
  let kv = p.k;
//#end
  // The norm: each row's sum of squares over the whole workgroup (without NORM, x is used as it is).
//#if NORM
//#for r in 0..M
  var ss${r} = 0.0;
//#end
  for (var i = lid; i < kv; i += ${WG}u) {
//#for r in 0..M
    let xs${r} = VF(x[${r}u * kv + i]);
    ss${r} += hsum(xs${r} * xs${r});
//#end
  }
//#for r in 0..M
  red[${r * WG}u + lid] = ss${r};
//#end
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
//#for r in 0..M
      red[${r * WG}u + lid] += red[${r * WG}u + lid + s];
//#end
    }
    workgroupBarrier();
  }
//#for r in 0..M
  let inv${r} = inverseSqrt(red[${r * WG}u] / f32(p.k) + p.eps);
//#end
  workgroupBarrier();
//#end
  // Columns past the end still join every barrier; they read column n − 1 and write nothing.
  let c = min(col, n - 1u);
//#for r in 0..M
  var acc${r} = VF(0.0);
//#end
  // Which part the column is in is the same for all LANES invocations of it.
//#for q in 0..3
//#if q == 0
  if (c < p.n0) {
    let wrow = c * kv;
//#elif q == 1
  } else if (c < p.n0 + p.n1) {
    let wrow = (c - p.n0) * kv;
//#else
  } else {
    let wrow = (c - p.n0 - p.n1) * kv;
//#end
    for (var i = lane; i < kv; i += ${LANES}u) {
      let wv = VF(w${q}[wrow + i]);
//#if NORM
      let g = VF(nw[i]);
//#for r in 0..M
      acc${r} += VF(VS(g * VF(VS(VF(x[${r}u * kv + i]) * inv${r})))) * wv;
//#end
//#else
//#for r in 0..M
      acc${r} += VF(x[${r}u * kv + i]) * wv;
//#end
//#end
    }
//#end
  }
//#for r in 0..M
  var lo${r} = 0.0;
//#end
//#if LORA
  let rt = p.r0 + p.r1 + p.r2;
//#for q in 0..3
//#if q == 0
  if (c < p.n0) {
    let rq = p.r0;
    let sq = p.s0;
    let ro = 0u;
    let brow = c * rq;
//#elif q == 1
  } else if (c < p.n0 + p.n1) {
    let rq = p.r1;
    let sq = p.s1;
    let ro = p.r0;
    let brow = (c - p.n0) * rq;
//#else
  } else {
    let rq = p.r2;
    let sq = p.s2;
    let ro = p.r0 + p.r1;
    let brow = (c - p.n0 - p.n1) * rq;
//#end
    for (var i = lane; i < rq; i += ${LANES}u) {
      let bv = sq * f32(e${q}[brow + i]);
//#for r in 0..M
      lo${r} += f32(t[${r}u * rt + ro + i]) * bv;
//#end
    }
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
  if (lane == 0u && col < n) {
//#if BIAS
    var bias: f32;
    if (col < p.n0) {
      bias = f32(e0[col]);
    } else if (col < p.n0 + p.n1) {
      bias = f32(e1[col - p.n0]);
    } else {
      bias = f32(e2[col - p.n0 - p.n1]);
    }
//#end
//#for r in 0..M
//#if BIAS
    y[${r}u * n + col] = ${T}(f32(${T}(red[${r * WG}u + lid])) + bias);
//#else
    y[${r}u * n + col] = ${T}(red[${r * WG}u + lid]);
//#end
//#end
  }
}
