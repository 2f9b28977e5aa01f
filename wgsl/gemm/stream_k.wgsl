// The stream-K partition, shared by gemm/tiled.wgsl (STREAM_K) and gemm/stream_k_fixup.wgsl. Tiles
// 0 .. p.sk_dp - 1 are whole tiles, one workgroup each, run first in full waves (neighbouring tiles share
// their operands' slabs in L2 as a whole-tile grid's do). The iterations of the other tiles are their k
// slabs in order, tile after tile; stream-K workgroup w of p.sk_groups runs [sk_start(w), sk_start(w + 1))
// of them (indices counted from the first iteration of the whole product), so every such workgroup runs
// the same number of slabs to within one and the last wave runs full. The planner keeps
// (p.sk_groups + 1) · p.tiles · p.sk_slabs below 2^32 (gemm_plan.ts), so the products below do not wrap.

// Iterations of the stream-K tiles.
fn sk_total() -> u32 {
  return (p.tiles - p.sk_dp) * p.sk_slabs;
}

// The first iteration of stream-K workgroup w.
fn sk_start(w: u32) -> u32 {
  return p.sk_dp * p.sk_slabs + w * sk_total() / p.sk_groups;
}

// The stream-K workgroup running iteration i (of a stream-K tile): the last w with sk_start(w) <= i.
fn sk_owner(i: u32) -> u32 {
  return ((i - p.sk_dp * p.sk_slabs + 1u) * p.sk_groups - 1u) / sk_total();
}

// Where a run that does not cover its whole tile leaves its f32 partial tile: slot 2w for the first run of
// stream-K workgroup w (it may start inside a tile), 2w + 1 for its last (it may end inside one). A run
// between them covers whole tiles and stores them itself.
fn sk_slot(w: u32, first: bool) -> u32 {
  return select(2u * w + 1u, 2u * w, first);
}
