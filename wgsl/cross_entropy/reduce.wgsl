// Tree reduction over one workgroup, shared by the cross-entropy kernels.
var<workgroup> part: array<f32, ${WG}>;

// Tree reduction of part[] (max when `take_max`, else sum); every invocation gets the result.
fn reduce_part(lid: u32, take_max: bool) -> f32 {
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let u = part[lid];
      let v = part[lid + s];
      part[lid] = select(u + v, max(u, v), take_max);
    }
    workgroupBarrier();
  }
  let r = part[0];
  workgroupBarrier();
  return r;
}
