// Step 1 of quantizing a frozen weight (src/backend/kernels/quantize.ts): scale b of the blocks of
// p.block elements, the block's absolute maximum (NF4) or that over 127 (int8; one block per row).
@group(0) @binding(1) var<storage, read> w: array<${T}>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let b = flat_index(wid, nwg, lid, ${WG}u);
  if (b >= p.blocks) {
    return;
  }
  let end = min(p.size, (b + 1u) * p.block);
  var a = 0.0;
  for (var i = b * p.block; i < end; i++) {
    a = max(a, abs(f32(w[i])));
  }
//#if QUANT == "nf4"
  scales[b] = a;
//#else
  scales[b] = a / 127.0;
//#end
}
