// The SwiGLU half of a feed-forward block for decoding: y[m, n] = silu(x · gᵀ) · (x · uᵀ) for x [m, k]
// with m = M <= 8 rows and gate and up weights g, u [n, k] (u's rows start `u_off` elements into its
// buffer: Phi-3's gate_up_proj binds one weight as both), in one pass over both weights (the layout of
// wgsl/gemv.wgsl: LANES invocations per output column, one accumulator pair per input row, vec4 loads
// with VEC).
// With NORM the RMSNorm before the block is fused in as in wgsl/gemv_norm.wgsl: x is the residual stream
// and each workgroup normalises it (scale nw) on the fly. The gate and up products are rounded to the
// storage type before the activation, as separate layers would store them. With LORA, LoRA terms join
// the gate and up sums as in wgsl/gemv.wgsl: t [m, rg + ru] holds x̂ A_gateᵀ then x̂ A_upᵀ, bg and bu
// are the B weights [n, rg] and [n, ru], scaled by sg and su.
//#if VEC
alias VS = vec4<${T}>;
alias VF = vec4<f32>;
//#else
alias VS = ${T};
alias VF = f32;
//#end
@group(0) @binding(1) var<storage, read> x: array<VS>;
@group(0) @binding(2) var<storage, read> nw: array<VS>;
@group(0) @binding(3) var<storage, read> g: array<VS>;
@group(0) @binding(4) var<storage, read> u: array<VS>;
@group(0) @binding(5) var<storage, read> t: array<${T}>;
@group(0) @binding(6) var<storage, read> bg: array<${T}>;
@group(0) @binding(7) var<storage, read> bu: array<${T}>;
@group(0) @binding(8) var<storage, read_write> y: array<${T}>;

var<workgroup> red_g: array<f32, ${WG * M}>;
var<workgroup> red_u: array<f32, ${WG * M}>;

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
//#if VEC
  let kv = p.k / 4u;
  let uo = p.u_off / 4u;
//#else
  let kv = p.k;
  let uo = p.u_off;
//#end
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
  red_g[${r * WG}u + lid] = ss${r};
//#end
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
//#for r in 0..M
      red_g[${r * WG}u + lid] += red_g[${r * WG}u + lid + s];
//#end
    }
    workgroupBarrier();
  }
//#for r in 0..M
  let inv${r} = inverseSqrt(red_g[${r * WG}u] / f32(p.k) + p.eps);
//#end
  workgroupBarrier();
//#end
  // Columns past the end still join every barrier; they read column n − 1 and write nothing.
  let c = min(col, p.n - 1u);
//#for r in 0..M
  var ag${r} = VF(0.0);
  var au${r} = VF(0.0);
//#end
  for (var i = lane; i < kv; i += ${LANES}u) {
    let gv = VF(g[c * kv + i]);
    let uv = VF(u[uo + c * kv + i]);
//#if NORM
    let nv = VF(nw[i]);
//#end
//#for r in 0..M
//#if NORM
    let x${r} = VF(VS(nv * VF(VS(VF(x[${r}u * kv + i]) * inv${r}))));
//#else
    let x${r} = VF(x[${r}u * kv + i]);
//#end
    ag${r} += x${r} * gv;
    au${r} += x${r} * uv;
//#end
  }
//#for r in 0..M
  var lg${r} = 0.0;
  var lu${r} = 0.0;
//#end
//#if LORA
  let rt = p.rg + p.ru;
  for (var i = lane; i < p.rg; i += ${LANES}u) {
    let bv = p.sg * f32(bg[c * p.rg + i]);
//#for r in 0..M
    lg${r} += f32(t[${r}u * rt + i]) * bv;
//#end
  }
  for (var i = lane; i < p.ru; i += ${LANES}u) {
    let bv = p.su * f32(bu[c * p.ru + i]);
//#for r in 0..M
    lu${r} += f32(t[${r}u * rt + p.rg + i]) * bv;
//#end
  }
//#end
//#for r in 0..M
  red_g[${r * WG}u + lid] = hsum(ag${r}) + lg${r};
  red_u[${r * WG}u + lid] = hsum(au${r}) + lu${r};
//#end
  workgroupBarrier();
  for (var s = ${LANES / 2}u; s > 0u; s = s >> 1u) {
    if (lane < s) {
//#for r in 0..M
      red_g[${r * WG}u + lid] += red_g[${r * WG}u + lid + s];
      red_u[${r * WG}u + lid] += red_u[${r * WG}u + lid + s];
//#end
    }
    workgroupBarrier();
  }
  if (lane == 0u && col < p.n) {
//#for r in 0..M
    let gs${r} = f32(${T}(red_g[${r * WG}u + lid]));
    let act${r} = f32(${T}(gs${r} / (1.0 + exp(-gs${r}))));
    y[${r}u * p.n + col] = ${T}(act${r} * f32(${T}(red_u[${r * WG}u + lid])));
//#end
  }
}
