// Seeded sampling of one token per row of logits x [rows, n], transformers' warpers in their order:
// temperature, then top-k (keep x >= the k-th largest, ties kept), then top-p (keep a token when the
// probability mass of the tokens no more likely than it exceeds 1 − p; the most likely always stays),
// then a draw by the uniform u = dropout_hash(seed, counter + row) / 2^32 (24 bits) over the kept
// tokens in index order. The CPU twin is sampleRow in src/backend/kernels/sample_token.ts.
// One workgroup per row. The k-th value and the nucleus' edge are found by bisection over bit
// patterns (32 passes each), so nothing is sorted.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> ids: array<f32>;

var<workgroup> part: array<f32, ${WG}>;
var<workgroup> count: array<u32, ${WG}>;
var<workgroup> pick_chunk: u32;
var<workgroup> pick_rest: f32;

// A u32 whose unsigned order is the float order (negative floats reversed below the positive ones).
fn order_key(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn sum_part(lid: u32) -> f32 {
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      part[lid] = part[lid] + part[lid + s];
    }
    workgroupBarrier();
  }
  let r = part[0];
  workgroupBarrier();
  return r;
}

fn max_part(lid: u32) -> f32 {
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      part[lid] = max(part[lid], part[lid + s]);
    }
    workgroupBarrier();
  }
  let r = part[0];
  workgroupBarrier();
  return r;
}

fn sum_count(lid: u32) -> u32 {
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      count[lid] = count[lid] + count[lid + s];
    }
    workgroupBarrier();
  }
  let r = count[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
  let base = row * p.n;
  // Top-k: the largest key t with at least k values at or above it is the k-th largest value's key.
  var kth = 0u;
  if (p.top_k > 0u && p.top_k < p.n) {
    for (var bit = 32u; bit > 0u; bit--) {
      let cand = kth | (1u << (bit - 1u));
      var c = 0u;
      for (var j = lid; j < p.n; j += ${WG}u) {
        c += select(0u, 1u, order_key(f32(x[base + j])) >= cand);
      }
      count[lid] = c;
      if (sum_count(lid) >= p.top_k) {
        kth = cand;
      }
    }
  }
  // Softmax of the kept logits over the temperature.
  var m = p.neg_inf;
  for (var j = lid; j < p.n; j += ${WG}u) {
    let v = f32(x[base + j]);
    if (order_key(v) >= kth) {
      m = max(m, v / p.temperature);
    }
  }
  part[lid] = m;
  m = max_part(lid);
  var s = 0.0;
  for (var j = lid; j < p.n; j += ${WG}u) {
    let v = f32(x[base + j]);
    if (order_key(v) >= kth) {
      s += exp(v / p.temperature - m);
    }
  }
  part[lid] = s;
  s = sum_part(lid);
  // Top-p: the largest probability t whose mass at or below it stays within 1 − p; keep probs above t.
  // The most likely token has probability exp(0) / s; it is kept even when rounding says otherwise.
  var edge = -1.0;
  if (p.top_p < 1.0) {
    var t = 0u;
    for (var bit = 31u; bit > 0u; bit--) {
      let cand = t | (1u << (bit - 1u));
      let tf = bitcast<f32>(cand);
      var acc = 0.0;
      for (var j = lid; j < p.n; j += ${WG}u) {
        let v = f32(x[base + j]);
        let q = exp(v / p.temperature - m) / s;
        if (order_key(v) >= kth && q <= tf) {
          acc += q;
        }
      }
      part[lid] = acc;
      if (sum_part(lid) <= 1.0 - p.top_p) {
        t = cand;
      }
    }
    edge = min(bitcast<f32>(t), bitcast<f32>(bitcast<u32>(1.0 / s) - 1u));
  }
  // The draw: kept mass in contiguous chunks, the chunk the goal falls in, then a walk inside it.
  let chunk = (p.n + ${WG - 1}u) / ${WG}u;
  let lo = min(lid * chunk, p.n);
  let hi = min(lo + chunk, p.n);
  var mass = 0.0;
  for (var j = lo; j < hi; j++) {
    let v = f32(x[base + j]);
    let q = exp(v / p.temperature - m) / s;
    if (order_key(v) >= kth && q > edge) {
      mass += q;
    }
  }
  part[lid] = mass;
  workgroupBarrier();
  if (lid == 0u) {
    var total = 0.0;
    for (var c = 0u; c < ${WG}u; c++) {
      total += part[c];
    }
    let u = f32(dropout_hash(p.seed, p.counter + row) >> 8u) / 16777216.0;
    let goal = u * total;
    var acc = 0.0;
    var found = 0xffffffffu;
    var last = 0u;
    for (var c = 0u; c < ${WG}u; c++) {
      if (part[c] > 0.0) {
        last = c;
        if (found == 0xffffffffu && acc + part[c] > goal) {
          found = c;
          pick_rest = goal - acc;
        }
      }
      acc += part[c];
    }
    if (found == 0xffffffffu) {
      found = last;
      pick_rest = part[last]; // past the end: the chunk's last kept token
    }
    pick_chunk = found;
  }
  workgroupBarrier();
  if (lid == pick_chunk) {
    var acc = 0.0;
    var chosen = lo;
    var done = false;
    for (var j = lo; j < hi; j++) {
      let v = f32(x[base + j]);
      let q = exp(v / p.temperature - m) / s;
      if (!done && order_key(v) >= kth && q > edge) {
        acc += q;
        chosen = j;
        done = acc > pick_rest;
      }
    }
    ids[row] = f32(chosen);
  }
}
