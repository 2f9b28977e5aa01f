// The dequantized frozen weight (src/backend/kernels/quantize.ts): w[i] = code value · scale, one f32
// product, stored as ${T}.
@group(0) @binding(1) var<storage, read> packed: array<u32>;
@group(0) @binding(2) var<storage, read_write> w: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.size) {
    return;
  }
  let nf4 = ${QUANT == "nf4"};
  let s = bitcast<f32>(packed[p.code_words + i / p.block]);
  w[i] = ${T}(quant_value(packed[i / quant_per_word(nf4)], i, nf4) * s);
}
