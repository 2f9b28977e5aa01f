// out[i, j] = table[ids[i], j] for a [rows, dim] table whose rows [lo, hi) are bound (a block of a table
// split across buffers is table rows lo.. from its start); ids outside them are left for another block.
@group(0) @binding(1) var<storage, read> table: array<${T}>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flat_index(wid, nwg, lid, ${WG}u);
  if (e >= p.count * p.dim) {
    return;
  }
  let i = e / p.dim;
  let j = e % p.dim;
  let id = ids[i];
  if (id < p.lo || id >= p.hi) {
    return;
  }
  y[e] = table[(id - p.lo) * p.dim + j];
}
