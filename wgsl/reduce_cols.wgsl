// Sum or max over the middle axis of [outer, n, inner] (OP = "sum" | "max"): one invocation per output
// element; neighbouring invocations read neighbouring addresses.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.outer * p.inner) {
    return;
  }
  let o = i / p.inner;
  let j = i % p.inner;
  var at = o * p.n * p.inner + j;
//#if OP == "sum"
  var acc = 0.0;
//#else
  var acc = p.neg_inf;
//#end
  for (var k = 0u; k < p.n; k++) {
//#if OP == "sum"
    acc += f32(x[at]);
//#else
    acc = max(acc, f32(x[at]));
//#end
    at += p.inner;
  }
  y[i] = ${T}(acc);
}
