// Shared by the three attention kernels (forward, backward for queries, backward for keys and values).
// Positions: query row i of a call with `seq` queries and `keys` keys sits at absolute position
// keys - seq + i (the keys before it are a cache). A key j is visible to a query at position qa when
// j <= qa (causal), qa - j < window (when window > 0) and the padding mask marks j as a real token.
// The mask lives on the device as one word per [batch, key]; nothing [seq, keys]-sized is ever built.

var<workgroup> part: array<f32, ${WG}>;

fn key_visible(b: u32, qa: u32, j: u32) -> bool {
  if (j > qa) {
    return false;
  }
  if (p.window > 0u && qa - j >= p.window) {
    return false;
  }
  return p.has_mask == 0u || kmask[b * p.keys + j] != 0u;
}

// First key a query at position qa may see (the window's start).
fn first_key(qa: u32) -> u32 {
  if (p.window > 0u && qa + 1u > p.window) {
    return qa + 1u - p.window;
  }
  return 0u;
}

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
