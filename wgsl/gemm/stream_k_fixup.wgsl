// The fix-up pass of a stream-K GEMM (GemmPlan.streamK, gemm/tiled.wgsl): each tile whose k slabs two or
// more workgroups shared is summed from their f32 partial tiles (gemm/stream_k.wgsl has the partition and
// the slots), in k order, then scaled by alpha, given the bias and stored. A tile is split exactly where a
// workgroup's share starts inside it; workgroup w of this pass takes the tile in which share w starts
// when that start is inside the tile and no earlier share starts inside it, so each split tile is summed
// once. Every other workgroup returns at once.
@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<${T}>;
//#if VEC_C
@group(0) @binding(3) var<storage, read_write> c: array<vec4<${T}>>;
//#else
@group(0) @binding(3) var<storage, read_write> c: array<${T}>;
//#end

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  // Stream-K workgroup w's share starts at sk_start(w); share 0 starts at the first stream-K tile's start.
  let w = flat_group(wid, nwg);
  if (w == 0u || w >= p.sk_groups) {
    return;
  }
  let start = sk_start(w);
  let tile = start / p.sk_slabs;
  let t0 = tile * p.sk_slabs;
  if (start == t0 || sk_start(w - 1u) > t0) {
    return;
  }
  let w_lo = sk_owner(t0);
  let w_hi = sk_owner(t0 + p.sk_slabs - 1u);
  let row0 = (tile / p.tiles_n) * ${BM}u;
  let col0 = (tile % p.tiles_n) * ${BN}u;
  for (var e = lid; e < ${BM * BN / 4}u; e += ${WG}u) {
    var acc = vec4<f32>(0.0);
    for (var v = w_lo; v <= w_hi; v++) {
      acc += part[sk_slot(v, sk_start(v) >= t0) * ${BM * BN / 4}u + e];
    }
    let row = row0 + e / ${BN / 4}u;
    let col = col0 + (e % ${BN / 4}u) * 4u;
    if (row < p.m) {
//#if BIAS
      let o = acc * p.alpha + vec4<f32>(
        f32(bias[min(col, p.n - 1u)]),
        f32(bias[min(col + 1u, p.n - 1u)]),
        f32(bias[min(col + 2u, p.n - 1u)]),
        f32(bias[min(col + 3u, p.n - 1u)]),
      );
//#else
      let o = acc * p.alpha;
//#end
//#if VEC_C
      if (col < p.n) {
        c[(row * p.n + col) / 4u] = vec4<${T}>(o);
      }
//#else
      for (var q = 0u; q < 4u; q++) {
        if (col + q < p.n) {
          c[row * p.n + col + q] = ${T}(o[q]);
        }
      }
//#end
    }
  }
}
