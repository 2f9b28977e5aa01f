// Helpers prepended to every kernel. Kernel templates name their storage element types with
// placeholders (f32 or f16 once expanded); arithmetic always runs in f32.

// The dropout hash: the twin of dropoutHash in src/tensor/random.ts and bit-identical to it (u32
// multiplication wraps like Math.imul).
fn dropout_hash(seed: u32, index: u32) -> u32 {
  var h = index ^ (seed * 0x9e3779b1u);
  h = (h ^ (h >> 16u)) * 0x7feb352du;
  h = (h ^ (h >> 15u)) * 0x846ca68bu;
  h = h ^ (h >> 16u);
  h = (h ^ seed) * 0x85ebca6bu;
  return h ^ (h >> 13u);
}

// The dropout multiplier of element `index`: `keep` (1 / (1 - p)) where the hash reaches the threshold.
fn dropout_factor(seed: u32, threshold: u32, keep: f32, index: u32) -> f32 {
  return select(0.0, keep, dropout_hash(seed, index) >= threshold);
}

// Flat index of an invocation when 1-D work is folded onto a 2-D grid of workgroups (the dispatch size
// is limited per dimension).
fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg_size: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * wg_size + lid;
}

// Index of a workgroup when one workgroup per row is folded onto a 2-D grid.
fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wid.y * nwg.x + wid.x;
}
