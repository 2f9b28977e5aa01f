// Codes of quantized frozen weights, shared by the quantizing, dequantizing and GEMM kernels. The layout
// (codes, then one f32 scale per block) and the rounding rules are described in
// src/backend/kernels/quantize.ts, whose CPU twin this is.

// QLoRA's NF4 values and the f32-rounded midpoints between neighbours (NF4_VALUES and NF4_MIDPOINTS in
// src/backend/kernels/quantize.ts), as bit patterns so that every value is exact. Written out as selects and
// comparisons rather than indexed arrays: GPU compilers put indexed private arrays in slow memory
// (docs/DESIGN.md), and these run once per weight element inside the GEMMs.

// The value of NF4 code c (0..15): a select tree over its bits.
fn nf4_value(c: u32) -> f32 {
  let b0 = (c & 1u) != 0u;
  let b1 = (c & 2u) != 0u;
  let b2 = (c & 4u) != 0u;
  let b3 = (c & 8u) != 0u;
  let p0 = select(0xbf800000u, 0xbf3239b1u, b0);
  let p1 = select(0xbf066b30u, 0xbeca32a0u, b0);
  let p2 = select(0xbe91a24du, 0xbe3d353fu, b0);
  let p3 = select(0xbdba7871u, 0x00000000u, b0);
  let p4 = select(0x3da2faffu, 0x3e24cae3u, b0);
  let p5 = select(0x3e7c04ddu, 0x3ead033au, b0);
  let p6 = select(0x3ee1a4b8u, 0x3f1007abu, b0);
  let p7 = select(0x3f3913b3u, 0x3f800000u, b0);
  let q0 = select(p0, p1, b1);
  let q1 = select(p2, p3, b1);
  let q2 = select(p4, p5, b1);
  let q3 = select(p6, p7, b1);
  let r0 = select(q0, q1, b2);
  let r1 = select(q2, q3, b2);
  return bitcast<f32>(select(r0, r1, b3));
}

// The NF4 code of v = w / absmax: the number of midpoints below v (a tie goes to the lower code).
fn nf4_code(v: f32) -> u32 {
  var c = 0u;
  c += select(0u, 1u, v > bitcast<f32>(0xbf591cd8u));
  c += select(0u, 1u, v > bitcast<f32>(0xbf1c5270u));
  c += select(0u, 1u, v > bitcast<f32>(0xbeeb8480u));
  c += select(0u, 1u, v > bitcast<f32>(0xbeadea76u));
  c += select(0u, 1u, v > bitcast<f32>(0xbe703cecu));
  c += select(0u, 1u, v > bitcast<f32>(0xbe0d38bcu));
  c += select(0u, 1u, v > bitcast<f32>(0xbd3a7871u));
  c += select(0u, 1u, v > bitcast<f32>(0x3d22faffu));
  c += select(0u, 1u, v > bitcast<f32>(0x3df64862u));
  c += select(0u, 1u, v > bitcast<f32>(0x3e5067e0u));
  c += select(0u, 1u, v > bitcast<f32>(0x3e9582d4u));
  c += select(0u, 1u, v > bitcast<f32>(0x3ec753f9u));
  c += select(0u, 1u, v > bitcast<f32>(0x3f006d04u));
  c += select(0u, 1u, v > bitcast<f32>(0x3f248dafu));
  c += select(0u, 1u, v > bitcast<f32>(0x3f5c89dau));
  return c;
}

// Elements per 32-bit word: 8 NF4 codes or 4 int8 codes.
fn quant_per_word(nf4: bool) -> u32 {
  return select(4u, 8u, nf4);
}

// The shift of element i's NF4 code in its word: two codes per byte, the even element in the high nibble.
fn nf4_shift(i: u32) -> u32 {
  return ((i >> 1u) & 3u) * 8u + select(4u, 0u, (i & 1u) == 1u);
}

// The shift of element i's int8 code in its word (bytes little-endian).
fn int8_shift(i: u32) -> u32 {
  return (i & 3u) * 8u;
}

// The code value of element i held in `word`: the NF4 table's entry, or the sign-extended int8.
fn quant_value(word: u32, i: u32, nf4: bool) -> f32 {
  if (nf4) {
    return nf4_value((word >> nf4_shift(i)) & 15u);
  }
  return f32(bitcast<i32>(((word >> int8_shift(i)) & 255u) << 24u) >> 24u);
}
