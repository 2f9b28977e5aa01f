// Shared by the tiled attention kernels (forward, backward for queries, backward for keys and values).
// Positions: query row i of a call with `seq` queries and `keys` keys sits at absolute position
// keys - seq + i (the keys before it are a cache). A key j is visible to a query at position qa when
// j <= qa (causal), qa - j < window (when window > 0) and the padding mask marks j as a real token.
// The mask lives on the device as one word per [batch, key]; nothing [seq, keys]-sized is ever built.
//
// Rows are read as DV chunks of 4 values (the head width D rounded up to a multiple of 4, zeros past D):
// with VEC (D a multiple of 4) each chunk is one vec4 load, otherwise four scalar loads. Scores are kept
// in base 2 (q · k · scale · log2 e) so that each weight is one exp2; the log-sum-exp stays natural.

const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;

// First key a query at position qa may see (the window's start).
fn first_key(qa: u32) -> u32 {
  if (p.window > 0u && qa + 1u > p.window) {
    return qa + 1u - p.window;
  }
  return 0u;
}

// Whether key j (already known to exist and to pass the padding mask) is visible to position qa.
fn in_reach(qa: u32, j: u32) -> bool {
  return j <= qa && (p.window == 0u || qa - j < p.window);
}

// Key j's word: bit 0 when it exists (j < keys), bit 1 when it also passes the padding mask.
fn key_word(b: u32, j: u32) -> u32 {
  if (j >= p.keys) {
    return 0u;
  }
  if (p.has_mask != 0u && kmask[b * p.keys + j] == 0u) {
    return 1u;
  }
  return 3u;
}

// Chunk c of row `row` of each input (zeros past D).
fn chunk_q(row: u32, c: u32) -> vec4<f32> {
//#if VEC
  return vec4<f32>(q[row * ${DV}u + c]);
//#else
  let at = row * ${D}u + c * 4u;
  var r = vec4<f32>(0.0);
  if (c * 4u < ${D}u) {
    r.x = f32(q[at]);
  }
  if (c * 4u + 1u < ${D}u) {
    r.y = f32(q[at + 1u]);
  }
  if (c * 4u + 2u < ${D}u) {
    r.z = f32(q[at + 2u]);
  }
  if (c * 4u + 3u < ${D}u) {
    r.w = f32(q[at + 3u]);
  }
  return r;
//#end
}

fn chunk_k(row: u32, c: u32) -> vec4<f32> {
//#if VEC
  return vec4<f32>(k[row * ${DV}u + c]);
//#else
  let at = row * ${D}u + c * 4u;
  var r = vec4<f32>(0.0);
  if (c * 4u < ${D}u) {
    r.x = f32(k[at]);
  }
  if (c * 4u + 1u < ${D}u) {
    r.y = f32(k[at + 1u]);
  }
  if (c * 4u + 2u < ${D}u) {
    r.z = f32(k[at + 2u]);
  }
  if (c * 4u + 3u < ${D}u) {
    r.w = f32(k[at + 3u]);
  }
  return r;
//#end
}

fn chunk_v(row: u32, c: u32) -> vec4<f32> {
//#if VEC
  return vec4<f32>(v[row * ${DV}u + c]);
//#else
  let at = row * ${D}u + c * 4u;
  var r = vec4<f32>(0.0);
  if (c * 4u < ${D}u) {
    r.x = f32(v[at]);
  }
  if (c * 4u + 1u < ${D}u) {
    r.y = f32(v[at + 1u]);
  }
  if (c * 4u + 2u < ${D}u) {
    r.z = f32(v[at + 2u]);
  }
  if (c * 4u + 3u < ${D}u) {
    r.w = f32(v[at + 3u]);
  }
  return r;
//#end
}

//#if HAS_DOUT
fn chunk_dout(row: u32, c: u32) -> vec4<f32> {
//#if VEC
  return vec4<f32>(dout[row * ${DV}u + c]);
//#else
  let at = row * ${D}u + c * 4u;
  var r = vec4<f32>(0.0);
  if (c * 4u < ${D}u) {
    r.x = f32(dout[at]);
  }
  if (c * 4u + 1u < ${D}u) {
    r.y = f32(dout[at + 1u]);
  }
  if (c * 4u + 2u < ${D}u) {
    r.z = f32(dout[at + 2u]);
  }
  if (c * 4u + 3u < ${D}u) {
    r.w = f32(dout[at + 3u]);
  }
  return r;
//#end
}
//#end

//#if HAS_O
fn chunk_o(row: u32, c: u32) -> vec4<f32> {
//#if VEC
  return vec4<f32>(o[row * ${DV}u + c]);
//#else
  let at = row * ${D}u + c * 4u;
  var r = vec4<f32>(0.0);
  if (c * 4u < ${D}u) {
    r.x = f32(o[at]);
  }
  if (c * 4u + 1u < ${D}u) {
    r.y = f32(o[at + 1u]);
  }
  if (c * 4u + 2u < ${D}u) {
    r.z = f32(o[at + 2u]);
  }
  if (c * 4u + 3u < ${D}u) {
    r.w = f32(o[at + 3u]);
  }
  return r;
//#end
}
//#end
