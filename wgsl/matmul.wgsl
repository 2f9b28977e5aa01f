// Tiled GEMM: C[z] = alpha · op(A[z]) · op(B[z]), op(A) [m, k], op(B) [k, n], accumulated in f32.
// A is stored [m, k] ([k, m] when TRANS_A), B [k, n] ([n, k] when TRANS_B). A workgroup computes a
// BM × BN block of C, staging BK-deep slabs of A and B in workgroup memory; each invocation keeps a
// TM × TN register tile as separately named vec4 accumulators (unrolled by the template, never a private
// array). Edges are bounds-checked: no dimension needs to be a multiple of anything.
//
// The z axis of the grid is either the batch (operands advance by their z strides, 0 when broadcast) or a
// split of k (split-K: slice z covers k in [z · k_z_start, z · k_z_start + k_len) and writes its partial
// product at z · c_z_stride for splitk_reduce.wgsl to sum). MASK_A / MASK_B multiply each element of A / B
// by its dropout factor, keyed by the element's index in storage, as the fused LoRA paths need.
struct Params {
  m: u32,
  n: u32,
  k: u32,
  a_z_stride: u32,
  b_z_stride: u32,
  c_z_stride: u32,
  k_z_start: u32,
  k_len: u32,
  // First z of this dispatch: grids are limited to 65535 workgroups along z.
  z_base: u32,
  seed: u32,
  threshold: u32,
  keep: f32,
  alpha: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<${A_T}>;
@group(0) @binding(2) var<storage, read> b: array<${B_T}>;
@group(0) @binding(3) var<storage, read_write> c: array<${C_T}>;

// Both tiles are k-major so that the inner loop reads a row of each.
var<workgroup> a_tile: array<f32, ${BK * BM}>;
var<workgroup> b_tile: array<f32, ${BK * BN}>;

fn store4(row_base: u32, col: u32, v: vec4<f32>) {
  for (var q = 0u; q < 4u; q++) {
    if (col + q < p.n) {
      c[row_base + col + q] = ${C_T}(v[q]);
    }
  }
}

@compute @workgroup_size(${BN / TN}, ${BM / TM})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let z = wid.z + p.z_base;
  let row0 = wid.y * ${BM}u;
  let col0 = wid.x * ${BN}u;
  let tx = lid3.x;
  let ty = lid3.y;
  let a_off = z * p.a_z_stride;
  let b_off = z * p.b_z_stride;
  let k_begin = z * p.k_z_start;
  let k_end = min(p.k, k_begin + p.k_len);
//#for i in 0..TM
//#for j in 0..TN / 4
  var acc_${i}_${j} = vec4<f32>(0.0);
//#end
//#end
  for (var k0 = k_begin; k0 < k_end; k0 += ${BK}u) {
    for (var l = 0u; l < ${BM * BK / WG}u; l++) {
      let e = l * ${WG}u + lid;
      // Neighbouring invocations take neighbouring addresses of the stored layout.
//#if TRANS_A
      let r = e % ${BM}u;
      let kk = e / ${BM}u;
//#else
      let r = e / ${BK}u;
      let kk = e % ${BK}u;
//#end
      let gr = row0 + r;
      let gk = k0 + kk;
      var v = 0.0;
      if (gr < p.m && gk < k_end) {
//#if TRANS_A
        let at = a_off + gk * p.m + gr;
//#else
        let at = a_off + gr * p.k + gk;
//#end
        v = f32(a[at]);
//#if MASK_A
        v *= dropout_factor(p.seed, p.threshold, p.keep, at);
//#end
      }
      a_tile[kk * ${BM}u + r] = v;
    }
    for (var l = 0u; l < ${BN * BK / WG}u; l++) {
      let e = l * ${WG}u + lid;
//#if TRANS_B
      let cc = e / ${BK}u;
      let kk = e % ${BK}u;
//#else
      let cc = e % ${BN}u;
      let kk = e / ${BN}u;
//#end
      let gc = col0 + cc;
      let gk = k0 + kk;
      var v = 0.0;
      if (gc < p.n && gk < k_end) {
//#if TRANS_B
        let at = b_off + gc * p.k + gk;
//#else
        let at = b_off + gk * p.n + gc;
//#end
        v = f32(b[at]);
//#if MASK_B
        v *= dropout_factor(p.seed, p.threshold, p.keep, at);
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
  let c_off = z * p.c_z_stride;
//#for i in 0..TM
  if (row0 + ty * ${TM}u + ${i}u < p.m) {
    let row_base = c_off + (row0 + ty * ${TM}u + ${i}u) * p.n;
//#for j in 0..TN / 4
    store4(row_base, col0 + tx * ${TN}u + ${j * 4}u, acc_${i}_${j} * p.alpha);
//#end
  }
//#end
}
