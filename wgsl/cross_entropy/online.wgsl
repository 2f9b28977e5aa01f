// One vocabulary chunk of the fused loss's log-sum-exp, one workgroup per row of a logits chunk
// [rows, n] (classes c0 .. c0 + n of the whole vocabulary): folds the chunk into the row's running
// (maximum m, sum s of exp(x − m), target logit t) as an online softmax does, so the whole row of logits
// never exists. `targets` holds the target's column inside this chunk, or a negative value when the
// target lies in another chunk (or the row is ignored). FIRST: there is no earlier state (prev unread).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> prev: array<${L}>;
@group(0) @binding(3) var<storage, read> targets: array<i32>;
@group(0) @binding(4) var<storage, read_write> next: array<${L}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  if (row >= p.rows) {
    return;
  }
  let base = row * p.n;
  var m = p.neg_inf;
  for (var j = lid; j < p.n; j += ${WG}u) {
    m = max(m, f32(x[base + j]));
  }
  part[lid] = m;
  m = reduce_part(lid, true);
  var s = 0.0;
  for (var j = lid; j < p.n; j += ${WG}u) {
    s += exp(f32(x[base + j]) - m);
  }
  part[lid] = s;
  s = reduce_part(lid, false);
  if (lid == 0u) {
    let tj = targets[row];
    var t = 0.0;
    if (tj >= 0) {
      t = f32(x[base + u32(tj)]);
    }
//#if FIRST
    next[3u * row] = ${L}(m);
    next[3u * row + 1u] = ${L}(s);
    next[3u * row + 2u] = ${L}(t);
//#else
    let pm = f32(prev[3u * row]);
    let ps = f32(prev[3u * row + 1u]);
    let nm = max(pm, m);
    // A side with no mass yet (sum 0) adds nothing, even where its maximum is −∞.
    var ns = 0.0;
    if (ps > 0.0) {
      ns += ps * exp(pm - nm);
    }
    if (s > 0.0) {
      ns += s * exp(m - nm);
    }
    next[3u * row] = ${L}(nm);
    next[3u * row + 1u] = ${L}(ns);
    if (tj >= 0) {
      next[3u * row + 2u] = ${L}(t);
    } else {
      next[3u * row + 2u] = prev[3u * row + 2u];
    }
//#end
  }
}
