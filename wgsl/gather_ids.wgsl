// out[i, j] = table[ids[i], j] with the ids in an f32 storage written on the device (a decoding step's
// chosen tokens), so the next step's embedding needs no host round trip.
@group(0) @binding(1) var<storage, read> table: array<${T}>;
@group(0) @binding(2) var<storage, read> ids: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flat_index(wid, nwg, lid, ${WG}u);
  if (e >= p.count * p.dim) {
    return;
  }
  let i = e / p.dim;
  // Ids out of range (never written by argmax or sampling) read row 0 rather than past the table.
  let id = u32(ids[i]);
  let row = select(0u, id, id < p.rows);
  y[e] = table[row * p.dim + e % p.dim];
}
