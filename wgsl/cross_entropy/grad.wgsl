// Gradient of the fused loss for one logits chunk [rows, n]: (exp(x − lse) − onehot(target)) · g ·
// inv_count per element, lse the row's log-sum-exp over the whole vocabulary (kept by the forward), g
// the loss's incoming gradient (one element on the device, so nothing is read back). `targets` holds the
// target's column inside this chunk, −1 when it lies in another chunk, −2 on an ignored row (all 0).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> lse: array<${L}>;
@group(0) @binding(3) var<storage, read> g: array<${L}>;
@group(0) @binding(4) var<storage, read> targets: array<i32>;
@group(0) @binding(5) var<storage, read_write> dx: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flat_index(wid, nwg, lid, ${WG}u);
  if (e >= p.rows * p.n) {
    return;
  }
  let row = e / p.n;
  let j = e % p.n;
  let t = targets[row];
  var d = 0.0;
  if (t != -2) {
    d = exp(f32(x[e]) - f32(lse[row]));
    if (t >= 0 && u32(t) == j) {
      d -= 1.0;
    }
    d *= f32(g[0]) * p.inv_count;
  }
  dx[e] = ${T}(d);
}
