// The mixed-batch LoRA backward, per row (the twin of LORA_ROWS_BACK in src/backend/kernels/lora_rows.ts):
// with s = slots[m], t[m] = A_s x[m] and u[m] = B_sᵀ dy[m] (rank r_s <= R, stored in f32 at stride rs,
// zero past r_s and for rows without an adapter), then, with DX, dx[m] = scale_s · A_sᵀ u[m]. One
// workgroup per row; both shrinks share the forward's rounds (WG / L ranks at a time, L lanes per rank
// striding x and dy, a tree sum per rank) so the two cost the barriers of one. Loops run to the uniform
// bound R so that every barrier stays in uniform control flow. info holds 8 words per slot: rank, A
// offset, B offset, scale bits, then the weight-gradient pass's row range (unused here).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> dy: array<${T}>;
@group(0) @binding(3) var<storage, read> a: array<${TA}>;
@group(0) @binding(4) var<storage, read> b: array<${TA}>;
@group(0) @binding(5) var<storage, read> slots: array<u32>;
@group(0) @binding(6) var<storage, read> info: array<u32>;
@group(0) @binding(7) var<storage, read_write> t: array<f32>;
@group(0) @binding(8) var<storage, read_write> u: array<f32>;
@group(0) @binding(9) var<storage, read_write> dx: array<${T}>;

var<workgroup> part_t: array<f32, ${WG}>;
var<workgroup> part_u: array<f32, ${WG}>;
var<workgroup> tv: array<f32, ${R}>;
var<workgroup> uv: array<f32, ${R}>;

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
    rank = info[8u * s];
    a_off = info[8u * s + 1u];
    b_off = info[8u * s + 2u];
    scale = bitcast<f32>(info[8u * s + 3u]);
  }
  let lane = lid % ${L}u;
  let group = lid / ${L}u;
  let xo = row * p.k;
  let yo = row * p.n;
  for (var j0 = 0u; j0 < ${R}u; j0 += ${WG / L}u) {
    let j = j0 + group;
    var acc_t = 0.0;
    var acc_u = 0.0;
    if (j < rank) {
      let ao = a_off + j * p.k;
      for (var i = lane; i < p.k; i += ${L}u) {
        acc_t += f32(x[xo + i]) * f32(a[ao + i]);
      }
      for (var o = lane; o < p.n; o += ${L}u) {
        acc_u += f32(dy[yo + o]) * f32(b[b_off + o * rank + j]);
      }
    }
    part_t[lid] = acc_t;
    part_u[lid] = acc_u;
    workgroupBarrier();
    for (var h = ${HALF_L}u; h > 0u; h = h >> 1u) {
      if (lane < h) {
        part_t[lid] = part_t[lid] + part_t[lid + h];
        part_u[lid] = part_u[lid] + part_u[lid + h];
      }
      workgroupBarrier();
    }
    if (lane == 0u && j < ${R}u) {
      tv[j] = part_t[lid];
      uv[j] = part_u[lid];
    }
    workgroupBarrier();
  }
  let ro = row * p.rs;
  for (var j = lid; j < p.rs; j += ${WG}u) {
    t[ro + j] = tv[j];
    u[ro + j] = uv[j];
  }
//#if DX
  for (var i = lid; i < p.k; i += ${WG}u) {
    var acc = 0.0;
    for (var j = 0u; j < rank; j++) {
      acc += uv[j] * f32(a[a_off + j * p.k + i]);
    }
    dx[xo + i] = ${T}(scale * acc);
  }
//#end
}
