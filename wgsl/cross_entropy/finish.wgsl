// The fused loss's per-row result from the running state (m, s, t) after the last vocabulary chunk:
// lse = m + log s, and loss = lse − t (0 on ignored rows, marked by a negative flag).
@group(0) @binding(1) var<storage, read> state: array<${L}>;
@group(0) @binding(2) var<storage, read> ignored: array<i32>;
@group(0) @binding(3) var<storage, read_write> loss: array<${L}>;
@group(0) @binding(4) var<storage, read_write> lse: array<${L}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_index(wid, nwg, lid, ${WG}u);
  if (row >= p.rows) {
    return;
  }
  let l = f32(state[3u * row]) + log(f32(state[3u * row + 1u]));
  lse[row] = ${L}(l);
  if (ignored[row] < 0) {
    loss[row] = ${L}(0.0);
  } else {
    loss[row] = ${L}(l - f32(state[3u * row + 2u]));
  }
}
