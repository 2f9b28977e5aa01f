// Two products in one dispatch of gemm/direct.wgsl (PAIR; webgpu/gemm.ts recordGemmPair): the workgroups at
// z = 1 run a second product of the same m, k, layout and element types on A2 and B2 into C2, which is
// stored transposed ([n2, m]). The second's A and B take the LoRA phase's binding slots (a pair has no LoRA
// phase) and C2 the seventh. gemm/operands.wgsl's loaders read A2 and B2 where `pair_second` holds, and
// mask B where `pair_masked` does (p.pair_mask: 0 neither product's B, 1 the first's, 2 the second's).
//#if VEC_A
@group(0) @binding(3) var<storage, read> a2: array<vec4<${A_T}>>;
//#else
@group(0) @binding(3) var<storage, read> a2: array<${A_T}>;
//#end
//#if VEC_B
@group(0) @binding(4) var<storage, read> b2: array<vec4<${B_T}>>;
//#else
@group(0) @binding(4) var<storage, read> b2: array<${B_T}>;
//#end
@group(0) @binding(7) var<storage, read_write> c2: array<${C_T}>;

var<private> pair_second: bool;
var<private> pair_masked: bool;
// This workgroup's product's columns, column blocks and blocks (gemm/direct.wgsl's dim_n, dim_tiles_n and dim_tiles).
var<private> pn: u32;
var<private> ptn: u32;
var<private> pt: u32;

// Picks this workgroup's product (the first at z = 0, the second at z = 1).
fn pair_setup(wid: vec3<u32>) {
  pair_second = wid.z == 1u;
  pair_masked = p.pair_mask == wid.z + 1u;
  pn = select(p.n, p.n2, pair_second);
  ptn = select(p.tiles_n, p.tiles_n2, pair_second);
  pt = select(p.tiles, p.tiles2, pair_second);
}

// Stores v into C2 at columns col .. col + 3 of row `row` of the second product, transposed.
fn store_pair4(row: u32, col: u32, v: vec4<f32>) {
  for (var q = 0u; q < 4u; q++) {
    if (col + q < pn) {
      c2[(col + q) * p.m + row] = ${C_T}(v[q]);
    }
  }
}
