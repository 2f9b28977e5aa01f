// The GEMM operands shared by both schedules (gemm/tiled.wgsl, gemm/direct.wgsl): the bindings of A,
// B, bias and C and their loaders. Layouts, VEC_* and MASK_* flags are described in gemm/direct.wgsl's
// header; the uniform block `p` is generated from GEMM_PARAMS (src/backend/kernels/gemm.ts). With QUANT_B
// ("nf4" or "int8"), B is a packed quantized frozen weight (src/backend/kernels/quantize.ts: codes, then a
// scale per block of p.q_block elements from word p.q_scale_off) dequantized element by element on load.
// With PAIR, A and B load from A2 and B2 in the workgroups that run a pair's second product (gemm/pair.wgsl).
//#if VEC_A
@group(0) @binding(1) var<storage, read> a: array<vec4<${A_T}>>;
//#else
@group(0) @binding(1) var<storage, read> a: array<${A_T}>;
//#end
//#if QUANT_B
@group(0) @binding(2) var<storage, read> b: array<u32>;
//#elif VEC_B
@group(0) @binding(2) var<storage, read> b: array<vec4<${B_T}>>;
//#else
@group(0) @binding(2) var<storage, read> b: array<${B_T}>;
//#end
//#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<${C_T}>;
//#end
//#if VEC_C
@group(0) @binding(6) var<storage, read_write> c: array<vec4<${C_T}>>;
//#else
@group(0) @binding(6) var<storage, read_write> c: array<${C_T}>;
//#end

fn factor4(at: u32) -> vec4<f32> {
  return vec4<f32>(
    dropout_factor(p.seed, p.threshold, p.keep, at),
    dropout_factor(p.seed, p.threshold, p.keep, at + 1u),
    dropout_factor(p.seed, p.threshold, p.keep, at + 2u),
    dropout_factor(p.seed, p.threshold, p.keep, at + 3u),
  );
}

// Loads by element index `at` (a multiple of 4 for the vec4 forms), masked when asked.
//#if VEC_A && PAIR
fn load_a(at: u32) -> vec4<f32> {
  if (pair_second) {
    return vec4<f32>(a2[at / 4u]);
  }
  return vec4<f32>(a[at / 4u]);
}
//#elif PAIR
fn load_a(at: u32) -> f32 {
  if (pair_second) {
    return f32(a2[at]);
  }
  return f32(a[at]);
}
//#elif VEC_A
fn load_a(at: u32) -> vec4<f32> {
//#if MASK_A
  return vec4<f32>(a[at / 4u]) * factor4(at);
//#else
  return vec4<f32>(a[at / 4u]);
//#end
}
//#else
fn load_a(at: u32) -> f32 {
//#if MASK_A
  return f32(a[at]) * dropout_factor(p.seed, p.threshold, p.keep, at);
//#else
  return f32(a[at]);
//#end
}
//#end
//#if QUANT_B
// Element `at` of the dequantized B: its code's value times its block's scale, one f32 product.
fn quant_b(at: u32) -> f32 {
  let nf4 = ${QUANT_B == "nf4"};
  let s = bitcast<f32>(b[p.q_scale_off + at / p.q_block]);
  return quant_value(b[at / quant_per_word(nf4)], at, nf4) * s;
}
//#end
//#if QUANT_B && VEC_B
fn load_b(at: u32) -> vec4<f32> {
  return vec4<f32>(quant_b(at), quant_b(at + 1u), quant_b(at + 2u), quant_b(at + 3u));
}
//#elif QUANT_B
fn load_b(at: u32) -> f32 {
  return quant_b(at);
}
//#elif VEC_B && PAIR
fn load_b(at: u32) -> vec4<f32> {
  var v: vec4<f32>;
  if (pair_second) {
    v = vec4<f32>(b2[at / 4u]);
  } else {
    v = vec4<f32>(b[at / 4u]);
  }
//#if MASK_B
  if (pair_masked) {
    v *= factor4(at);
  }
//#end
  return v;
}
//#elif PAIR
fn load_b(at: u32) -> f32 {
  var v: f32;
  if (pair_second) {
    v = f32(b2[at]);
  } else {
    v = f32(b[at]);
  }
//#if MASK_B
  if (pair_masked) {
    v *= dropout_factor(p.seed, p.threshold, p.keep, at);
  }
//#end
  return v;
}
//#elif VEC_B
fn load_b(at: u32) -> vec4<f32> {
//#if MASK_B
  return vec4<f32>(b[at / 4u]) * factor4(at);
//#else
  return vec4<f32>(b[at / 4u]);
//#end
}
//#else
fn load_b(at: u32) -> f32 {
//#if MASK_B
  return f32(b[at]) * dropout_factor(p.seed, p.threshold, p.keep, at);
//#else
  return f32(b[at]);
//#end
}
//#end
