// One decoding step of attention over a preallocated key/value cache, for each (row b, query head h):
// rotate this step's query and key (rotate-half RoPE with the row's cos/sin), write the key and value
// into cache slot `pos` (the first query head of each key/value head writes), then softmax over the
// row's visible keys start[b] .. pos of q·k · scale, and out = Σ probs · v. Cache [batch, kvh, cap, d].
// One workgroup per (b, h). Keys before `pos` come from the cache; the new key and value come from
// this step's inputs, so no workgroup reads a slot another one writes in the same dispatch.
@group(0) @binding(1) var<storage, read> q: array<${T}>;
@group(0) @binding(2) var<storage, read> k: array<${T}>;
@group(0) @binding(3) var<storage, read> v: array<${T}>;
@group(0) @binding(4) var<storage, read> cos_t: array<f32>;
@group(0) @binding(5) var<storage, read> sin_t: array<f32>;
@group(0) @binding(6) var<storage, read_write> cache_k: array<${T}>;
@group(0) @binding(7) var<storage, read_write> cache_v: array<${T}>;
@group(0) @binding(8) var<storage, read> start: array<u32>;
@group(0) @binding(9) var<storage, read_write> out: array<${T}>;
@group(0) @binding(10) var<storage, read_write> scores: array<f32>;

var<workgroup> qr: array<f32, ${WG}>;
var<workgroup> kr: array<f32, ${WG}>;
var<workgroup> part: array<f32, ${WG}>;

fn reduce_part(lid: u32, take_max: bool) -> f32 {
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let a = part[lid];
      let b = part[lid + s];
      part[lid] = select(a + b, max(a, b), take_max);
    }
    workgroupBarrier();
  }
  let r = part[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let bh = flat_group(wid, nwg);
  if (bh >= p.batch * p.heads) {
    return;
  }
  let d = p.head_dim;
  let hd2 = d / 2u;
  let b = bh / p.heads;
  let h = bh % p.heads;
  let g = h / (p.heads / p.kv_heads);
  let qo = bh * d;
  let ko = (b * p.kv_heads + g) * d;
  let co = b * d;
  if (lid < d) {
    let qx = f32(q[qo + lid]);
    let kx = f32(k[ko + lid]);
    var qrot: f32;
    var krot: f32;
    if (lid < hd2) {
      qrot = -f32(q[qo + lid + hd2]);
      krot = -f32(k[ko + lid + hd2]);
    } else {
      qrot = f32(q[qo + lid - hd2]);
      krot = f32(k[ko + lid - hd2]);
    }
    qr[lid] = qx * cos_t[co + lid] + qrot * sin_t[co + lid];
    let kv = ${T}(kx * cos_t[co + lid] + krot * sin_t[co + lid]);
    // The cache holds the stored dtype's rounding; the new key enters the scores the same way.
    kr[lid] = f32(kv);
    if (h % (p.heads / p.kv_heads) == 0u) {
      let slot = ((b * p.kv_heads + g) * p.cap + p.pos) * d + lid;
      cache_k[slot] = kv;
      cache_v[slot] = v[ko + lid];
    }
  }
  workgroupBarrier();
  let kfirst = start[b];
  let cbase = (b * p.kv_heads + g) * p.cap;
  let sbase = bh * p.cap;
  var m = p.neg_inf;
  for (var j = kfirst + lid; j <= p.pos; j += ${WG}u) {
    var dot = 0.0;
    if (j == p.pos) {
      for (var i = 0u; i < d; i++) {
        dot += qr[i] * kr[i];
      }
    } else {
      for (var i = 0u; i < d; i++) {
        dot += qr[i] * f32(cache_k[(cbase + j) * d + i]);
      }
    }
    let sc = dot * p.scale;
    scores[sbase + j] = sc;
    m = max(m, sc);
  }
  part[lid] = m;
  m = reduce_part(lid, true);
  var s = 0.0;
  for (var j = kfirst + lid; j <= p.pos; j += ${WG}u) {
    s += exp(scores[sbase + j] - m);
  }
  part[lid] = s;
  s = reduce_part(lid, false);
  // Scores written by other invocations of this workgroup are read below.
  storageBarrier();
  workgroupBarrier();
  let chunks = ${WG}u / d;
  let dim = lid % d;
  let chunk = lid / d;
  var acc = 0.0;
  if (chunk < chunks) {
    for (var j = kfirst + chunk; j <= p.pos; j += chunks) {
      let w = exp(scores[sbase + j] - m);
      if (j == p.pos) {
        acc += w * f32(v[ko + dim]);
      } else {
        acc += w * f32(cache_v[(cbase + j) * d + dim]);
      }
    }
  }
  part[lid] = acc;
  workgroupBarrier();
  if (chunk == 0u) {
    var total = 0.0;
    for (var c = 0u; c < chunks; c++) {
      total += part[c * d + dim];
    }
    out[qo + dim] = ${T}(total / s);
  }
}
