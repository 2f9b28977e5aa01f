// Step 2 of quantizing a frozen weight (src/backend/kernels/quantize.ts): word i < p.code_words packs the
// codes of its 8 (NF4) or 4 (int8) elements from their blocks' scales; the words after the codes are the
// scales' bits. Declared as u32 so no bit pattern is ever taken for a float.
@group(0) @binding(1) var<storage, read> w: array<${T}>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read_write> packed: array<u32>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.words) {
    return;
  }
  if (i >= p.code_words) {
    packed[i] = scales[i - p.code_words];
    return;
  }
  let nf4 = ${QUANT == "nf4"};
  let per = quant_per_word(nf4);
  var word = 0u;
  for (var q = 0u; q < per; q++) {
    let e = i * per + q;
    if (e < p.size) {
      let s = bitcast<f32>(scales[e / p.block]);
      let v = f32(w[e]);
//#if QUANT == "nf4"
      let code = select(nf4_code(v / s), 7u, s == 0.0);
      word |= code << nf4_shift(e);
//#else
      var c = 0.0;
      if (s != 0.0) {
        let r = v / s;
        c = clamp(sign(r) * floor(abs(r) + 0.5), -127.0, 127.0);
      }
      word |= (bitcast<u32>(i32(c)) & 255u) << int8_shift(e);
//#end
    }
  }
  packed[i] = word;
}
