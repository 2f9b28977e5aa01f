// out[i] = element i of a buffer of little-endian 16-bit floats (FORMAT: bf16 or f16), widened
// to f32 exactly. The checkpoint loader uploads a BF16 or F16 tensor's raw words and widens them here,
// so the host never touches them one by one. Integer arithmetic only: no shader-f16, and f16
// subnormals, infinities and NaN payloads come through bit for bit (what the host decoder gives).
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn widen(h: u32) -> f32 {
//#if FORMAT == "bf16"
  return bitcast<f32>(h << 16u);
//#else
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    // Zero or subnormal: m · 2^-24, a normal f32 (exact).
    return bitcast<f32>(s | bitcast<u32>(f32(m) * 5.9604644775390625e-8));
  }
  if (e == 31u) {
    return bitcast<f32>(s | 0x7f800000u | (m << 13u));
  }
  return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
//#end
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i < p.n) {
    y[i] = widen((x[i / 2u] >> ((i & 1u) * 16u)) & 0xffffu);
  }
}
