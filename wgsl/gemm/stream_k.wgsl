// The stream-K partition, shared by gemm/tiled.wgsl (STREAM_K) and gemm/stream_k_fixup.wgsl. The
// iterations of a product are its tiles' k slabs in order, tile after tile (p.tiles · p.sk_slabs in all);
// workgroup w of p.sk_groups runs [sk_start(w), sk_start(w + 1)), so every workgroup runs the same number
// of slabs to within one and no wave runs part full. The planner keeps (p.sk_groups + 1) · p.tiles ·
// p.sk_slabs below 2^32 (gemm_plan.ts), so the products below do not wrap.

// The first iteration of workgroup w.
fn sk_start(w: u32) -> u32 {
  return w * (p.tiles * p.sk_slabs) / p.sk_groups;
}

// The workgroup running iteration i: the last w with sk_start(w) <= i.
fn sk_owner(i: u32) -> u32 {
  return ((i + 1u) * p.sk_groups - 1u) / (p.tiles * p.sk_slabs);
}

// Where a run that does not cover its whole tile leaves its f32 partial tile: slot 2w for the first run of
// workgroup w (it may start inside a tile), 2w + 1 for its last (it may end inside one). A run between
// them covers whole tiles and stores them itself.
fn sk_slot(w: u32, first: bool) -> u32 {
  return select(2u * w + 1u, 2u * w, first);
}
