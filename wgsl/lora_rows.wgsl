// Each row's own LoRA adapter in one pass (a mixed batch, SGMV-style shrink then expand):
// y[m] = y0[m] + scale_s · B_s (A_s x[m]) with s = slots[m], or y0[m] when the row has no adapter.
// One workgroup per row. Shrink: t = A_s x[m] (rank r_s <= R) into workgroup memory, WG / L ranks at a
// time, L lanes per rank striding the input, then a tree sum per rank (L is chosen with R so that a
// common rank takes one round of log2(L) barriers: each barrier costs much on software adapters). Expand:
// every lane writes its share of the outputs from t. The adapters' A and B are read from packed buffers
// at each slot's offsets (info: rank, A offset, B offset, scale bits per slot), so adapters of any rank
// share one dispatch. Loops run to the uniform bound R, not the row's rank, so every barrier stays in
// uniform control flow.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> y0: array<${T}>;
@group(0) @binding(3) var<storage, read> a: array<${TA}>;
@group(0) @binding(4) var<storage, read> b: array<${TA}>;
@group(0) @binding(5) var<storage, read> slots: array<u32>;
@group(0) @binding(6) var<storage, read> info: array<u32>;
@group(0) @binding(7) var<storage, read_write> y: array<${T}>;

var<workgroup> part: array<f32, ${WG}>;
var<workgroup> tv: array<f32, ${R}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  let s = slots[row];
  var rank = 0u;
  var a_off = 0u;
  var b_off = 0u;
  var scale = 0.0;
  if (s != 0xffffffffu) {
    rank = info[4u * s];
    a_off = info[4u * s + 1u];
    b_off = info[4u * s + 2u];
    scale = bitcast<f32>(info[4u * s + 3u]);
  }
  let lane = lid % ${L}u;
  let group = lid / ${L}u;
  let xo = row * p.k;
  for (var j0 = 0u; j0 < ${R}u; j0 += ${WG / L}u) {
    let j = j0 + group;
    var acc = 0.0;
    if (j < rank) {
      let ao = a_off + j * p.k;
      for (var i = lane; i < p.k; i += ${L}u) {
        acc += f32(x[xo + i]) * f32(a[ao + i]);
      }
    }
    part[lid] = acc;
    workgroupBarrier();
    for (var h = ${HALF_L}u; h > 0u; h = h >> 1u) {
      if (lane < h) {
        part[lid] = part[lid] + part[lid + h];
      }
      workgroupBarrier();
    }
    if (lane == 0u && j < ${R}u) {
      tv[j] = part[lid];
    }
    workgroupBarrier();
  }
  let yo = row * p.n;
  for (var o = lid; o < p.n; o += ${WG}u) {
    var acc = 0.0;
    let bo = b_off + o * rank;
    for (var j = 0u; j < rank; j++) {
      acc += tv[j] * f32(b[bo + j]);
    }
    y[yo + o] = ${T}(f32(y0[yo + o]) + scale * acc);
  }
}
