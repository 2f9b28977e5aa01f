// Broadcasting element-wise op: out[i] = op(a[ia], b[ib]) where ia and ib come from i's coordinates in
// the output shape and each operand's strides (0 along broadcast axes). Shapes arrive collapsed to at
// most MAX_RANK axes.
@group(0) @binding(1) var<storage, read> a: array<${T}>;
@group(0) @binding(2) var<storage, read> b: array<${T}>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

fn op(u: f32, v: f32) -> f32 {
//#if OP == "add"
  return u + v;
//#elif OP == "sub"
  return u - v;
//#elif OP == "mul"
  return u * v;
//#elif OP == "div"
  return u / v;
//#elif OP == "max"
  return select(v, u, u >= v);
//#elif OP == "gt"
  return select(0.0, 1.0, u > v);
//#end
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.n) {
    return;
  }
  var rest = i;
  var ia = 0u;
  var ib = 0u;
  for (var d = i32(p.rank) - 1; d >= 0; d--) {
    let q = u32(d) / 4u;
    let r = u32(d) % 4u;
    let extent = p.shape[q][r];
    let c = rest % extent;
    rest = rest / extent;
    ia += c * p.a_strides[q][r];
    ib += c * p.b_strides[q][r];
  }
  y[i] = ${T}(op(f32(a[ia]), f32(b[ib])));
}
