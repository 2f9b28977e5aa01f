// A product down to a LoRA rank, out[m, R] = drop(X)[m, k] · Q, in one pass over X and no k slices
// (src/backend/kernels/lora_down.ts). A workgroup takes ROWS whole rows, LANES invocations per row
// (a row's loads are one NVIDIA warp's: LANES consecutive vec4s of X); each lane strides k by
// LANES · 4, issuing U steps' loads before their sums so that several loads are in flight per lane.
// Each lane keeps its R partial sums in registers (R4 vec4s), then a row's lanes are summed through
// workgroup memory CH ranks at a time, in lane order. KR: Q is [k, R] (lora_B) rather than [R, k]
// (lora_A). MASK: X's elements are multiplied by their dropout factors, keyed by X's element index.
//#if VEC_X
@group(0) @binding(1) var<storage, read> x: array<vec4<${X_T}>>;
//#else
@group(0) @binding(1) var<storage, read> x: array<${X_T}>;
//#end
//#if VEC_Q
@group(0) @binding(2) var<storage, read> q: array<vec4<${Q_T}>>;
//#else
@group(0) @binding(2) var<storage, read> q: array<${Q_T}>;
//#end
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> part: array<f32, ${WG * CH}>;

// X[row, kk .. kk + 3] (zeros past k), masked; kk is a multiple of 4 below k.
fn load_x(row: u32, kk: u32) -> vec4<f32> {
  let at = row * p.k + kk;
//#if VEC_X
  var v = vec4<f32>(x[at / 4u]);
//#else
  var v = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    if (kk + c < p.k) {
      v[c] = f32(x[at + c]);
    }
  }
//#end
//#if MASK
  v *= vec4<f32>(
    dropout_factor(p.seed, p.threshold, p.keep, at),
    dropout_factor(p.seed, p.threshold, p.keep, at + 1u),
    dropout_factor(p.seed, p.threshold, p.keep, at + 2u),
    dropout_factor(p.seed, p.threshold, p.keep, at + 3u),
  );
//#end
  return v;
}

//#if KR
// Q[kr, 4 j4 .. 4 j4 + 3] (zeros past R).
fn load_q(kr: u32, j4: u32) -> vec4<f32> {
  let at = kr * ${R}u + 4u * j4;
//#if VEC_Q
  return vec4<f32>(q[at / 4u]);
//#else
  var v = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    if (4u * j4 + c < ${R}u) {
      v[c] = f32(q[at + c]);
    }
  }
  return v;
//#end
}
//#else
// Q[j, kk .. kk + 3] (zeros past k).
fn load_q(j: u32, kk: u32) -> vec4<f32> {
  let at = j * p.k + kk;
//#if VEC_Q
  return vec4<f32>(q[at / 4u]);
//#else
  var v = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    if (kk + c < p.k) {
      v[c] = f32(q[at + c]);
    }
  }
  return v;
//#end
}
//#end

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let grp = flat_group(wid, nwg);
  if (grp >= (p.m + ${ROWS - 1}u) / ${ROWS}u) {
    return;
  }
  let lane = lid % ${LANES}u;
  // Rows past m read row m - 1 (valid memory) and write nothing.
  let row = min(grp * ${ROWS}u + lid / ${LANES}u, p.m - 1u);
//#for j in 0..R4
  var acc${j} = vec4<f32>(0.0);
//#end
  for (var k0 = lane * 4u; k0 < p.k; k0 += ${LANES * 4 * U}u) {
//#for u in 0..U
    let kk${u} = k0 + ${u * LANES * 4}u;
    var xv${u} = vec4<f32>(0.0);
    if (kk${u} < p.k) {
      xv${u} = load_x(row, kk${u});
    }
//#end
//#for u in 0..U
    if (kk${u} < p.k) {
//#if KR
//#for c in 0..4
      {
        let kr = kk${u} + ${c}u;
//#if !VEC_X
        if (kr < p.k) {
//#end
//#for j in 0..R4
        acc${j} = fma(vec4<f32>(xv${u}[${c}]), load_q(kr, ${j}u), acc${j});
//#end
//#if !VEC_X
        }
//#end
      }
//#end
//#else
//#for j in 0..R4
      acc${j} += vec4<f32>(
        dot(xv${u}, load_q(${4 * j}u, kk${u})),
//#if 4 * j + 1 < R
        dot(xv${u}, load_q(${4 * j + 1}u, kk${u})),
//#else
        0.0,
//#end
//#if 4 * j + 2 < R
        dot(xv${u}, load_q(${4 * j + 2}u, kk${u})),
//#else
        0.0,
//#end
//#if 4 * j + 3 < R
        dot(xv${u}, load_q(${4 * j + 3}u, kk${u})),
//#else
        0.0,
//#end
      );
//#end
//#end
    }
//#end
  }
  // Sum each row's lanes, CH ranks at a time.
  let sum_row = lid / ${CH}u;
  let sum_rank = lid % ${CH}u;
  let out_row = grp * ${ROWS}u + sum_row;
//#for ch in 0..NCH
//#for jj in 0..CH
//#if ch * CH + jj < R
  part[lid * ${CH}u + ${jj}u] = acc${(ch * CH + jj) / 4}[${(ch * CH + jj) % 4}];
//#end
//#end
  workgroupBarrier();
  if (lid < ${ROWS * CH}u) {
    var s = 0.0;
    for (var l = 0u; l < ${LANES}u; l++) {
      s += part[(sum_row * ${LANES}u + l) * ${CH}u + sum_rank];
    }
    if (out_row < p.m && ${ch * CH}u + sum_rank < ${R}u) {
      out[out_row * ${R}u + ${ch * CH}u + sum_rank] = s;
    }
  }
  workgroupBarrier();
//#end
}
