// The mixed-batch LoRA backward's weight gradients (the twin of LORA_ROWS_GRAD in
// src/backend/kernels/lora_rows.ts): one invocation per element of the packed dA (the first a_size
// elements) and the packed dB (the next b_size). An element finds its slot s by the slots' offsets, then
// sums over the slot's rows (order[rowStart .. rowStart + rowCount), every row of the batch with adapter
// s): dA_s[j, i] = scale_s Σ u[m, j] x[m, i], dB_s[o, j] = scale_s Σ dy[m, o] t[m, j]. Neighbouring
// invocations read neighbouring x (dA) or t (dB) elements of one row, and one shared u or dy value.
// Elements of no slot (alignment gaps) are zero.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> dy: array<${T}>;
@group(0) @binding(3) var<storage, read> t: array<f32>;
@group(0) @binding(4) var<storage, read> u: array<f32>;
@group(0) @binding(5) var<storage, read> order: array<u32>;
@group(0) @binding(6) var<storage, read> info: array<u32>;
@group(0) @binding(7) var<storage, read_write> da: array<${TA}>;
@group(0) @binding(8) var<storage, read_write> db: array<${TA}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flat_index(wid, nwg, lid, ${WG}u);
  if (e >= p.a_size + p.b_size) {
    return;
  }
  let in_a = e < p.a_size;
  let at = select(e - p.a_size, e, in_a);
  // the slot whose A (or B) covers this element
  var found = false;
  var rank = 0u;
  var off = 0u;
  var scale = 0.0;
  var start = 0u;
  var count = 0u;
  for (var s = 0u; s < p.slots; s++) {
    let r = info[8u * s];
    let o = select(info[8u * s + 2u], info[8u * s + 1u], in_a);
    let len = select(p.n * r, r * p.k, in_a);
    if (!found && at >= o && at < o + len) {
      found = true;
      rank = r;
      off = o;
      scale = bitcast<f32>(info[8u * s + 3u]);
      start = info[8u * s + 4u];
      count = info[8u * s + 5u];
    }
  }
  var acc = 0.0;
  if (found) {
    let local = at - off;
    if (in_a) {
      let j = local / p.k;
      let i = local % p.k;
      for (var q = start; q < start + count; q++) {
        let m = order[q];
        acc += u[m * p.rs + j] * f32(x[m * p.k + i]);
      }
    } else {
      let o = local / rank;
      let j = local % rank;
      for (var q = start; q < start + count; q++) {
        let m = order[q];
        acc += f32(dy[m * p.n + o]) * t[m * p.rs + j];
      }
    }
  }
  if (in_a) {
    da[at] = ${TA}(scale * acc);
  } else {
    db[at] = ${TA}(scale * acc);
  }
}
