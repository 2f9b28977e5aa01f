// The routed LoRA terms of a decoding step (LORA_ROWS_PARTS in src/backend/kernels/lora_rows.ts): up to
// three projections of one input row, each through the row's own adapter per part, added to the base
// outputs y0 (the parts' columns side by side): z = y0 + scale · B (A x̂) per part, x̂ = x or, with NORM,
// T(nw · T(x / rms(x))) as wgsl/gemv_norm.wgsl computes it; y = z, or with GLU silu(z_gate) · z_up of
// the two column halves. The table holds 4 f32 per (part, row): rank, A offset, B offset, scale (rank
// 0: the row's columns stay at y0).
//
// One workgroup per (row, span of outputs): on a hardware GPU the span is WG, so a 1,536-wide gate|up
// spreads over 6 workgroups a row instead of one lane doing 6 columns (the kernel is latency-bound: 8
// rows, a few µs of work, each invocation's chain of dependent loads is its time); on a software adapter
// the span is the whole row (every workgroup's shrink is CPU time there). A workgroup first sums x² for
// the norm, then shrinks t_q = A_q x̂ only for the parts its outputs read (WG / L ranks a round, L lanes
// per rank, vec4 loads with VEC, four loads in flight per lane, a tree sum per rank), then every lane
// writes its outputs: a dot of t_q with the column's row of B. Part loops are unrolled (//#for) so every
// load names its binding. Loops run to uniform bounds (R ranks, the parts' columns) so every barrier
// stays in uniform control flow.
//#if VEC
alias VS = vec4<${T}>;
alias VA = vec4<${TA}>;
alias VF = vec4<f32>;
//#else
alias VS = ${T};
alias VA = ${TA};
alias VF = f32;
//#end
@group(0) @binding(1) var<storage, read> x: array<VS>;
@group(0) @binding(2) var<storage, read> nw: array<VS>;
@group(0) @binding(3) var<storage, read> y0: array<${T}>;
@group(0) @binding(4) var<storage, read> a0: array<VA>;
@group(0) @binding(5) var<storage, read> a1: array<VA>;
@group(0) @binding(6) var<storage, read> a2: array<VA>;
@group(0) @binding(7) var<storage, read> b0: array<${TA}>;
@group(0) @binding(8) var<storage, read> b1: array<${TA}>;
@group(0) @binding(9) var<storage, read> b2: array<${TA}>;
@group(0) @binding(10) var<storage, read> table: array<f32>;
@group(0) @binding(11) var<storage, read_write> y: array<${T}>;

var<workgroup> part: array<f32, ${WG}>;
var<workgroup> tv: array<f32, ${3 * R}>;

fn hsum(v: VF) -> f32 {
//#if VEC
  return (v.x + v.y) + (v.z + v.w);
//#else
  return v;
//#end
}

// x̂ at vector index i of the row starting at xo.
fn xhat(xo: u32, i: u32, inv: f32) -> VF {
//#if NORM
  return VF(VS(VF(nw[i]) * VF(VS(VF(x[xo + i]) * inv))));
//#else
  return VF(x[xo + i]);
//#end
}

//#for q in 0..3
// Lane's share of one rank's dot: A_q's row at ao (vector index) times x̂, four loads in flight.
fn shrink${q}(xo: u32, ao: u32, lane: u32, kv: u32, inv: f32) -> f32 {
  var acc = 0.0;
  var i = lane;
  for (; i + ${3 * L}u < kv; i += ${4 * L}u) {
    let p0 = xhat(xo, i, inv) * VF(a${q}[ao + i]);
    let p1 = xhat(xo, i + ${L}u, inv) * VF(a${q}[ao + i + ${L}u]);
    let p2 = xhat(xo, i + ${2 * L}u, inv) * VF(a${q}[ao + i + ${2 * L}u]);
    let p3 = xhat(xo, i + ${3 * L}u, inv) * VF(a${q}[ao + i + ${3 * L}u]);
    acc += hsum((p0 + p1) + (p2 + p3));
  }
  for (; i < kv; i += ${L}u) {
    acc += hsum(xhat(xo, i, inv) * VF(a${q}[ao + i]));
  }
  return acc;
}

// t_q · (column's row of B_q at bo), rank terms: for a rank bound up to 16 written out term by term
// (every load issued before the first product waits), else four loads in flight.
fn expand${q}(bo: u32, rank: u32) -> f32 {
  var acc = 0.0;
//#if R <= 16
//#for j in 0..R
  if (${j}u < rank) {
    acc += tv[${q * R + j}u] * f32(b${q}[bo + ${j}u]);
  }
//#end
//#else
  var j = 0u;
  for (; j + 4u <= rank; j += 4u) {
    let t = ${q * R}u + j;
    acc += (tv[t] * f32(b${q}[bo + j]) + tv[t + 1u] * f32(b${q}[bo + j + 1u])) +
      (tv[t + 2u] * f32(b${q}[bo + j + 2u]) + tv[t + 3u] * f32(b${q}[bo + j + 3u]));
  }
  for (; j < rank; j++) {
    acc += tv[${q * R}u + j] * f32(b${q}[bo + j]);
  }
//#end
  return acc;
}
//#end

// z at column c of `row`: y0 plus the term of the part that holds c, rounded to T.
fn z_at(row: u32, c: u32, total: u32) -> f32 {
  var q = 0u;
  var cl = c;
  if (cl >= p.n0) {
    q = 1u;
    cl = cl - p.n0;
    if (cl >= p.n1) {
      q = 2u;
      cl = cl - p.n1;
    }
  }
  let e = (q * p.m + row) * 4u;
  let rank = u32(table[e]);
  let bo = u32(table[e + 2u]) + cl * rank;
  var acc = 0.0;
  switch q {
    case 0u: { acc = expand0(bo, rank); }
    case 1u: { acc = expand1(bo, rank); }
    default: { acc = expand2(bo, rank); }
  }
  return f32(${T}(f32(y0[row * total + c]) + table[e + 3u] * acc));
}

// Whether columns [c0, c1) meet part q's columns [s, s + n).
fn meets(s: u32, n: u32, c0: u32, c1: u32) -> bool {
  return n > 0u && s < c1 && c0 < s + n;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flat_group(wid, nwg);
  let row = g / p.chunks;
  let o0 = (g % p.chunks) * p.span;
  let total = p.n0 + p.n1 + p.n2;
//#if GLU
  let n_out = total / 2u;
//#else
  let n_out = total;
//#end
  let o1 = min(o0 + p.span, n_out);
//#if VEC
  let kv = p.k / 4u;
//#else
  let kv = p.k;
//#end
  let xo = row * kv;
  var inv = 1.0;
//#if NORM
  var ss = 0.0;
  for (var i = lid; i < kv; i += ${WG}u) {
    let v = VF(x[xo + i]);
    ss += hsum(v * v);
  }
  part[lid] = ss;
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h = h >> 1u) {
    if (lid < h) {
      part[lid] = part[lid] + part[lid + h];
    }
    workgroupBarrier();
  }
  inv = inverseSqrt(part[0] / f32(p.k) + p.eps);
  workgroupBarrier();
//#end
  let lane = lid % ${L}u;
  let group = lid / ${L}u;
  let starts = array<u32, 3>(0u, p.n0, p.n0 + p.n1);
  let widths = array<u32, 3>(p.n0, p.n1, p.n2);
//#for q in 0..3
  // Part ${q}, when this workgroup's outputs read it (uniform: uniforms and the workgroup id only).
//#if GLU
  let need${q} = meets(starts[${q}], widths[${q}], o0, o1) || meets(starts[${q}], widths[${q}], n_out + o0, n_out + o1);
//#else
  let need${q} = meets(starts[${q}], widths[${q}], o0, o1);
//#end
  if (need${q}) {
    let e = (${q}u * p.m + row) * 4u;
    let rank = u32(table[e]);
//#if VEC
    let a_off = u32(table[e + 1u]) / 4u;
//#else
    let a_off = u32(table[e + 1u]);
//#end
    for (var j0 = 0u; j0 < ${R}u; j0 += ${WG / L}u) {
      let j = j0 + group;
      var acc = 0.0;
      if (j < rank) {
        acc = shrink${q}(xo, a_off + j * kv, lane, kv, inv);
      }
      part[lid] = acc;
      workgroupBarrier();
      for (var h = ${HALF_L}u; h > 0u; h = h >> 1u) {
        if (lane < h) {
          part[lid] = part[lid] + part[lid + h];
        }
        workgroupBarrier();
      }
      if (lane == 0u && j < ${R}u) {
        tv[${q * R}u + j] = part[lid];
      }
      workgroupBarrier();
    }
  }
//#end
  for (var o = o0 + lid; o < o1; o += ${WG}u) {
//#if GLU
    let gv = z_at(row, o, total);
    let s = f32(${T}(gv * (1.0 / (1.0 + exp(-gv)))));
    y[row * n_out + o] = ${T}(s * z_at(row, n_out + o, total));
//#else
    y[row * total + o] = ${T}(z_at(row, o, total));
//#end
  }
}
