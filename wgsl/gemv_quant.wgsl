// The GEMV of a quantized weight for decoding (NF4 or int8 codes, then one f32 scale per block:
// src/backend/kernels/quantize.ts): y[m, n] = x[m, k] · W[n, k]ᵀ (+ res with RES), W's elements decoded
// on the fly as one f32 product code value · scale, as wgsl/dequantize.wgsl stores them in f32. The
// layout of wgsl/gemv.wgsl, with an invocation taking one 32-bit word (8 NF4 or 4 int8 codes) of the
// column's row per step; k and the block are multiples of the codes per word, so a word has one scale.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> packed: array<u32>;
@group(0) @binding(3) var<storage, read> res: array<${T}>;
@group(0) @binding(4) var<storage, read_write> y: array<${T}>;

var<workgroup> red: array<f32, ${WG * M}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let nf4 = ${QUANT == "nf4"};
  let per = quant_per_word(nf4);
  let group = flat_group(wid, nwg);
  let lane = lid % ${LANES}u;
  let col = group * ${WG / LANES}u + lid / ${LANES}u;
  // Columns past the end still join every barrier; they read column n − 1 and write nothing.
  let c = min(col, p.n - 1u);
  let words = p.k / per;
//#for r in 0..M
  var acc${r} = 0.0;
//#end
  for (var wi = lane; wi < words; wi += ${LANES}u) {
    let first = c * p.k + wi * per;
    let word = packed[first / per];
    let s = bitcast<f32>(packed[p.code_words + first / p.block]);
    for (var e = 0u; e < per; e++) {
      let wv = quant_value(word, first + e, nf4) * s;
//#for r in 0..M
      acc${r} += f32(x[${r}u * p.k + wi * per + e]) * wv;
//#end
    }
  }
//#for r in 0..M
  red[${r * WG}u + lid] = acc${r};
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
