// Softmax (LOG = false) or log-softmax (LOG = true) over each row of [rows, n]: one workgroup per row;
// the row maximum is subtracted before exponentiating, so large logits cannot overflow.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;

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

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
  let base = row * p.n;
  var m = p.neg_inf;
  for (var j = lid; j < p.n; j += ${WG}u) {
    m = max(m, f32(x[base + j]));
  }
  part[lid] = m;
  m = reduce_part(lid, true);
  var s = 0.0;
  for (var j = lid; j < p.n; j += ${WG}u) {
    s += exp(f32(x[base + j]) - m);
  }
  part[lid] = s;
  s = reduce_part(lid, false);
//#if LOG
  let ls = log(s);
//#end
  for (var j = lid; j < p.n; j += ${WG}u) {
    let z = f32(x[base + j]) - m;
//#if LOG
    y[base + j] = ${T}(z - ls);
//#else
    y[base + j] = ${T}(exp(z) / s);
//#end
  }
}
