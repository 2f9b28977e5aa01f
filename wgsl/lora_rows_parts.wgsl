// The routed LoRA terms of a decoding step (LORA_ROWS_PARTS in src/backend/kernels/lora_rows.ts): up to
// three projections of one input row, each through the row's own adapter per part, added to the base
// outputs y0 (the parts' columns side by side): z = y0 + scale · B (A x̂) per part, x̂ = x or, with NORM,
// T(nw · T(x / rms(x))) as wgsl/gemv_norm.wgsl computes it; y = z, or with GLU silu(z_gate) · z_up of
// the two column halves. One workgroup per row. The table holds 4 f32 per (part, row): rank, A offset,
// B offset, scale (rank 0: the row's columns stay at y0). Shrink as wgsl/lora_rows.wgsl (WG / L ranks at
// a time, L lanes per rank, a tree sum per rank) per part into tv; expand: every lane writes its share of
// the columns. Loops run to the uniform bounds (3 parts, R ranks) so every barrier stays in uniform
// control flow.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> nw: array<${T}>;
@group(0) @binding(3) var<storage, read> y0: array<${T}>;
@group(0) @binding(4) var<storage, read> a0: array<${TA}>;
@group(0) @binding(5) var<storage, read> a1: array<${TA}>;
@group(0) @binding(6) var<storage, read> a2: array<${TA}>;
@group(0) @binding(7) var<storage, read> b0: array<${TA}>;
@group(0) @binding(8) var<storage, read> b1: array<${TA}>;
@group(0) @binding(9) var<storage, read> b2: array<${TA}>;
@group(0) @binding(10) var<storage, read> table: array<f32>;
@group(0) @binding(11) var<storage, read_write> y: array<${T}>;

var<workgroup> part: array<f32, ${WG}>;
var<workgroup> tv: array<f32, ${3 * R}>;

fn a_at(q: u32, i: u32) -> f32 {
  switch q {
    case 0u: { return f32(a0[i]); }
    case 1u: { return f32(a1[i]); }
    default: { return f32(a2[i]); }
  }
}

fn b_at(q: u32, i: u32) -> f32 {
  switch q {
    case 0u: { return f32(b0[i]); }
    case 1u: { return f32(b1[i]); }
    default: { return f32(b2[i]); }
  }
}

// z at column c of row `row`: y0 plus the term of the part that holds c, rounded to T.
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
  for (var j = 0u; j < rank; j++) {
    acc += tv[q * ${R}u + j] * b_at(q, bo + j);
  }
  return f32(${T}(f32(y0[row * total + c]) + table[e + 3u] * acc));
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_group(wid, nwg);
  let xo = row * p.k;
  var inv = 1.0;
//#if NORM
  var ss = 0.0;
  for (var i = lid; i < p.k; i += ${WG}u) {
    let v = f32(x[xo + i]);
    ss += v * v;
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
  for (var q = 0u; q < 3u; q++) {
    let e = (q * p.m + row) * 4u;
    let rank = u32(table[e]);
    let a_off = u32(table[e + 1u]);
    for (var j0 = 0u; j0 < ${R}u; j0 += ${WG / L}u) {
      let j = j0 + group;
      var acc = 0.0;
      if (j < rank) {
        let ao = a_off + j * p.k;
        for (var i = lane; i < p.k; i += ${L}u) {
//#if NORM
          let xi = f32(${T}(f32(nw[i]) * f32(${T}(f32(x[xo + i]) * inv))));
//#else
          let xi = f32(x[xo + i]);
//#end
          acc += xi * a_at(q, ao + i);
        }
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
        tv[q * ${R}u + j] = part[lid];
      }
      workgroupBarrier();
    }
  }
  let total = p.n0 + p.n1 + p.n2;
//#if GLU
  let half = total / 2u;
  for (var o = lid; o < half; o += ${WG}u) {
    let g = z_at(row, o, total);
    let s = f32(${T}(g * (1.0 / (1.0 + exp(-g)))));
    y[row * half + o] = ${T}(s * z_at(row, half + o, total));
  }
//#else
  for (var o = lid; o < total; o += ${WG}u) {
    y[row * total + o] = ${T}(z_at(row, o, total));
  }
//#end
}
