// Codes of quantized frozen weights, shared by the quantizing, dequantizing and GEMM kernels. The layout
// (codes, then one f32 scale per block) and the rounding rules are described in
// src/backend/kernels/quantize.ts, whose CPU twin this is.

// QLoRA's NF4 values and the f32-rounded midpoints between neighbours, as bit patterns so that every
// value is exact (NF4_VALUES and NF4_MIDPOINTS in src/backend/kernels/quantize.ts).
var<private> NF4_TABLE: array<u32, 16> = array<u32, 16>(
  0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
  0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
);
var<private> NF4_MIDS: array<u32, 15> = array<u32, 15>(
  0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu,
  0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau,
);

// The value of NF4 code c (0..15).
fn nf4_value(c: u32) -> f32 {
  return bitcast<f32>(NF4_TABLE[c]);
}

// The NF4 code of v = w / absmax: the number of midpoints below v (a tie goes to the lower code).
fn nf4_code(v: f32) -> u32 {
  var c = 0u;
  for (var j = 0u; j < 15u; j++) {
    c += select(0u, 1u, v > bitcast<f32>(NF4_MIDS[j]));
  }
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
