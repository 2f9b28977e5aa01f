// Sum or max over each row of [rows, n] (OP = "sum" | "max"): one workgroup per row, each invocation
// folding a strided slice, then a tree reduction in workgroup memory.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;

var<workgroup> part: array<f32, ${WG}>;

fn combine(u: f32, v: f32) -> f32 {
//#if OP == "sum"
  return u + v;
//#else
  return max(u, v);
//#end
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
//#if OP == "sum"
  var acc = 0.0;
//#else
  var acc = p.neg_inf;
//#end
  let base = row * p.n;
  for (var j = lid; j < p.n; j += ${WG}u) {
    acc = combine(acc, f32(x[base + j]));
  }
  part[lid] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      part[lid] = combine(part[lid], part[lid + s]);
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    y[row] = ${T}(part[0]);
  }
}
