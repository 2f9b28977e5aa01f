// One decoding step of attention over a preallocated key/value cache, for each (row b, query head h):
// rotate this step's query and key (rotate-half RoPE at the row's position pos − start[b], a row of the
// cos/sin tables), write the key and value into cache slot `pos` (the first query head of each key/value
// head writes), then softmax over the row's visible keys start[b] .. pos of q·k · scale, and
// out = Σ probs · v. Cache [batch, kvh, cap, D]. Query, key and value rows are read at a stride and
// offset each, so they may be column ranges of one [batch, (h + 2 kvh) D] projection output.
// One workgroup per (b, h). Keys before `pos` come from the cache; the new key and value come from
// this step's inputs, so no workgroup reads a slot another one writes in the same dispatch.
// The head width D is a template constant, and with VEC (D a multiple of 8) cache rows are read as vec4:
// an invocation's loads of one key row are then D / 4 independent loads in flight together, and the
// weighted sum over values runs D / 4 invocations per key, each over a quarter of the keys' chunks.
//#if VEC
alias VS = vec4<${T}>;
alias VF = vec4<f32>;
//#else
alias VS = ${T};
alias VF = f32;
//#end
@group(0) @binding(1) var<storage, read> q: array<${T}>;
@group(0) @binding(2) var<storage, read> k: array<${T}>;
@group(0) @binding(3) var<storage, read> v: array<${T}>;
@group(0) @binding(4) var<storage, read> cos_t: array<f32>;
@group(0) @binding(5) var<storage, read> sin_t: array<f32>;
@group(0) @binding(6) var<storage, read_write> cache_k: array<VS>;
@group(0) @binding(7) var<storage, read_write> cache_v: array<VS>;
@group(0) @binding(8) var<storage, read> start: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<${T}>;
@group(0) @binding(10) var<storage, read_write> scores: array<f32>;

var<workgroup> qr: array<f32, ${D}>;
var<workgroup> kr: array<f32, ${D}>;
var<workgroup> vr: array<f32, ${D}>;
var<workgroup> part: array<f32, ${WG}>;
var<workgroup> part_v: array<VF, ${WG}>;

// Vector element i of the rotated query, the new key and the new value (4 consecutive elements with VEC).
//#if VEC
const DV = ${D / 4}u;
fn q4(i: u32) -> VF {
  return VF(qr[4u * i], qr[4u * i + 1u], qr[4u * i + 2u], qr[4u * i + 3u]);
}
fn k4(i: u32) -> VF {
  return VF(kr[4u * i], kr[4u * i + 1u], kr[4u * i + 2u], kr[4u * i + 3u]);
}
fn v4(i: u32) -> VF {
  return VF(vr[4u * i], vr[4u * i + 1u], vr[4u * i + 2u], vr[4u * i + 3u]);
}
//#else
const DV = ${D}u;
fn q4(i: u32) -> VF {
  return qr[i];
}
fn k4(i: u32) -> VF {
  return kr[i];
}
fn v4(i: u32) -> VF {
  return vr[i];
}
//#end

fn hsum(x: VF) -> f32 {
//#if VEC
  return (x.x + x.y) + (x.z + x.w);
//#else
  return x;
//#end
}

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
  let hd2 = ${D / 2}u;
  let b = bh / p.heads;
  let h = bh % p.heads;
  let g = h / (p.heads / p.kv_heads);
  let qo = b * p.q_stride + p.q_off + h * ${D}u;
  let ko = b * p.k_stride + p.k_off + g * ${D}u;
  let vo = b * p.v_stride + p.v_off + g * ${D}u;
  let kfirst = min(u32(start[b]), p.pos);
  let co = (p.pos - kfirst) * ${D}u;
  if (lid < ${D}u) {
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
    // The cache holds the stored dtype's rounding; the new key enters the scores the same way.
    kr[lid] = f32(${T}(kx * cos_t[co + lid] + krot * sin_t[co + lid]));
    vr[lid] = f32(v[vo + lid]);
  }
  workgroupBarrier();
  let cbase = (b * p.kv_heads + g) * p.cap;
  if (h % (p.heads / p.kv_heads) == 0u && lid < DV) {
    cache_k[(cbase + p.pos) * DV + lid] = VS(k4(lid));
    cache_v[(cbase + p.pos) * DV + lid] = VS(v4(lid));
  }
  let sbase = bh * p.cap;
  var m = p.neg_inf;
  for (var j = kfirst + lid; j <= p.pos; j += ${WG}u) {
    var dot = VF(0.0);
    if (j == p.pos) {
      for (var i = 0u; i < DV; i++) {
        dot += q4(i) * k4(i);
      }
    } else {
      for (var i = 0u; i < DV; i++) {
        dot += q4(i) * VF(cache_k[(cbase + j) * DV + i]);
      }
    }
    let sc = hsum(dot) * p.scale;
    scores[sbase + j] = sc;
    m = max(m, sc);
  }
  part[lid] = m;
  m = reduce_part(lid, true);
  // Each invocation turns its own scores into unnormalised weights (no other invocation reads them yet).
  var s = 0.0;
  for (var j = kfirst + lid; j <= p.pos; j += ${WG}u) {
    let e = exp(scores[sbase + j] - m);
    scores[sbase + j] = e;
    s += e;
  }
  part[lid] = s;
  s = reduce_part(lid, false);
  // Weights written by other invocations of this workgroup are read below.
  storageBarrier();
  workgroupBarrier();
  let chunks = ${WG}u / DV;
  let dim = lid % DV;
  let chunk = lid / DV;
  var acc = VF(0.0);
  // The cached keys four at a time (their loads independent, in flight together), then the new one.
  if (chunk < chunks) {
    var j = kfirst + chunk;
    for (; j + 3u * chunks < p.pos; j += 4u * chunks) {
      let v0 = VF(cache_v[(cbase + j) * DV + dim]);
      let v1 = VF(cache_v[(cbase + j + chunks) * DV + dim]);
      let v2 = VF(cache_v[(cbase + j + 2u * chunks) * DV + dim]);
      let v3 = VF(cache_v[(cbase + j + 3u * chunks) * DV + dim]);
      acc += scores[sbase + j] * v0 + scores[sbase + j + chunks] * v1;
      acc += scores[sbase + j + 2u * chunks] * v2 + scores[sbase + j + 3u * chunks] * v3;
    }
    for (; j < p.pos; j += chunks) {
      acc += scores[sbase + j] * VF(cache_v[(cbase + j) * DV + dim]);
    }
    if (j == p.pos) {
      acc += scores[sbase + j] * v4(dim);
    }
  }
  part_v[lid] = acc;
  workgroupBarrier();
  if (chunk == 0u) {
    var total = VF(0.0);
    for (var c = 0u; c < chunks; c++) {
      total += part_v[c * DV + dim];
    }
    let o = total / s;
//#if VEC
    for (var e = 0u; e < 4u; e++) {
      out[bh * ${D}u + 4u * dim + e] = ${T}(o[e]);
    }
//#else
    out[bh * ${D}u + dim] = ${T}(o);
//#end
  }
}
