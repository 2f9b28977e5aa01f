// The output kernel of the fused LoRA linear, one pass over the [m, n] output:
//   y = scale · mask ⊙ (P · op(Q)) + X · op(W) (+ bias)
// Forward (TRANS): P = t = drop_pre(x) Aᵀ [m, r] (f32), Q = lora_B [n, r], X = x [m, k], W = weight [n, k],
//   mask = the post-dropout mask of y.
// Backward dx (not TRANS): P = (dyl B) [m, r] (f32), Q = lora_A [r, n], X = dy [m, k], W = weight [k, n],
//   mask = the pre-dropout mask of x.
// One accumulator set serves both products: the LoRA term is accumulated first, scaled and masked in
// registers, and the base product then accumulates on top of it. Tiling as in matmul.wgsl.
struct Params {
  m: u32,
  n: u32,
  k: u32,
  r: u32,
  seed: u32,
  threshold: u32,
  keep: f32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> lq: array<${T}>;
@group(0) @binding(3) var<storage, read> x: array<${T}>;
@group(0) @binding(4) var<storage, read> w: array<${T}>;
@group(0) @binding(5) var<storage, read> bias: array<${T}>;
@group(0) @binding(6) var<storage, read_write> y: array<${T}>;

var<workgroup> a_tile: array<f32, ${BK * BM}>;
var<workgroup> b_tile: array<f32, ${BK * BN}>;

// scale times the dropout factors of output elements (row, col .. col + 3).
fn lora_factor(row: u32, col: u32) -> vec4<f32> {
//#if MASK
  let at = row * p.n + col;
  return p.scale * vec4<f32>(
    dropout_factor(p.seed, p.threshold, p.keep, at),
    dropout_factor(p.seed, p.threshold, p.keep, at + 1u),
    dropout_factor(p.seed, p.threshold, p.keep, at + 2u),
    dropout_factor(p.seed, p.threshold, p.keep, at + 3u),
  );
//#else
  return vec4<f32>(p.scale);
//#end
}

fn store4(row: u32, col: u32, v: vec4<f32>) {
  for (var q = 0u; q < 4u; q++) {
    if (col + q < p.n) {
//#if BIAS
      y[row * p.n + col + q] = ${T}(v[q] + f32(bias[col + q]));
//#else
      y[row * p.n + col + q] = ${T}(v[q]);
//#end
    }
  }
}

@compute @workgroup_size(${BN / TN}, ${BM / TM})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row0 = wid.y * ${BM}u;
  let col0 = wid.x * ${BN}u;
  let tx = lid3.x;
  let ty = lid3.y;
//#for i in 0..TM
//#for j in 0..TN / 4
  var acc_${i}_${j} = vec4<f32>(0.0);
//#end
//#end
//#for ph in 0..2
  {
//#if ph == 0
    let depth = p.r;
//#else
    let depth = p.k;
//#end
    for (var k0 = 0u; k0 < depth; k0 += ${BK}u) {
      for (var l = 0u; l < ${BM * BK / WG}u; l++) {
        let e = l * ${WG}u + lid;
        let rr = e / ${BK}u;
        let kk = e % ${BK}u;
        let gr = row0 + rr;
        let gk = k0 + kk;
        var v = 0.0;
        if (gr < p.m && gk < depth) {
//#if ph == 0
          v = lp[gr * p.r + gk];
//#else
          v = f32(x[gr * p.k + gk]);
//#end
        }
        a_tile[kk * ${BM}u + rr] = v;
      }
      for (var l = 0u; l < ${BN * BK / WG}u; l++) {
        let e = l * ${WG}u + lid;
//#if TRANS
        let cc = e / ${BK}u;
        let kk = e % ${BK}u;
//#else
        let cc = e % ${BN}u;
        let kk = e / ${BN}u;
//#end
        let gc = col0 + cc;
        let gk = k0 + kk;
        var v = 0.0;
        if (gc < p.n && gk < depth) {
//#if ph == 0 && TRANS
          v = f32(lq[gc * p.r + gk]);
//#elif ph == 0
          v = f32(lq[gk * p.n + gc]);
//#elif TRANS
          v = f32(w[gc * p.k + gk]);
//#else
          v = f32(w[gk * p.n + gc]);
//#end
        }
        b_tile[kk * ${BN}u + cc] = v;
      }
      workgroupBarrier();
      for (var kk = 0u; kk < ${BK}u; kk++) {
        let ab = kk * ${BM}u + ty * ${TM}u;
        let bb = kk * ${BN}u + tx * ${TN}u;
//#for i in 0..TM
        let a${i} = vec4<f32>(a_tile[ab + ${i}u]);
//#end
//#for j in 0..TN / 4
        let b${j} = vec4<f32>(b_tile[bb + ${j * 4}u], b_tile[bb + ${j * 4 + 1}u], b_tile[bb + ${j * 4 + 2}u], b_tile[bb + ${j * 4 + 3}u]);
//#end
//#for i in 0..TM
//#for j in 0..TN / 4
        acc_${i}_${j} = fma(a${i}, b${j}, acc_${i}_${j});
//#end
//#end
      }
      workgroupBarrier();
    }
  }
//#if ph == 0
//#for i in 0..TM
//#for j in 0..TN / 4
  acc_${i}_${j} *= lora_factor(row0 + ty * ${TM}u + ${i}u, col0 + tx * ${TN}u + ${j * 4}u);
//#end
//#end
//#end
//#end
//#for i in 0..TM
  if (row0 + ty * ${TM}u + ${i}u < p.m) {
//#for j in 0..TN / 4
    store4(row0 + ty * ${TM}u + ${i}u, col0 + tx * ${TN}u + ${j * 4}u, acc_${i}_${j});
//#end
  }
//#end
}
