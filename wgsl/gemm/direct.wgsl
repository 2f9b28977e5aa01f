// GEMM for software adapters (lavapipe/llvmpipe, SwiftShader): C[z] = alpha · op(A[z]) · op(B[z]), plus the
// optional LoRA pre-phase of the fused linear (see below). Each invocation computes a TM × TN block of C
// straight from storage: no workgroup memory and no barriers.
//
// Why this shape (measured on llvmpipe, bench/NOTES.md): a software adapter runs 8 invocations as the lanes
// of one SIMD register and turns every storage load into a loop over those lanes, so a vec4 load costs
// about what a scalar load does and either costs as much as dozens of FMAs; a barrier turns the shader into
// coroutines whose values live in memory. So the tile per invocation is large (the FMAs per loaded value
// grow with it), every operand is read as vec4 where its contiguous dimension allows (VEC_*), and
// invocations never wait for each other.
//
// Layouts: A is stored [m, k] ([k, m] when TRANS_A), B [k, n] ([n, k] when TRANS_B), C [m, n]. VEC_A means
// A's contiguous dimension is a multiple of 4 (k, or m when TRANS_A); likewise VEC_B (n, or k when
// TRANS_B) and VEC_C (n). k runs in steps of 4; steps past the end of k load clamped indices and use
// zeros instead. Rows and columns past the edge are clamped on load and skipped on store: no size needs to
// be a multiple of anything.
//
// The z axis of the grid is either the batch (operands advance by their z strides, 0 when broadcast) or a
// split of k (slice z covers k in [z · k_z_start, z · k_z_start + k_len) and writes its partial product
// at z · c_z_stride for gemm/splitk_reduce.wgsl). MASK_A / MASK_B multiply each element of A / B by its
// dropout factor, keyed by the element's index in storage.
//
// LORA: first accumulate P · op(Q) over depth r (P = lp [m, r] f32, Q = lq [n, r] when TRANS_B else
// [r, n]), multiply by scale and, with MASK, by the dropout factors of the output elements; then the main
// product accumulates on top, and BIAS adds bias[col]. VEC_P / VEC_Q are the LoRA phase's counterparts of
// VEC_A / VEC_B.
//
// Bindings and loaders: gemm/operands.wgsl and gemm/lora_phase.wgsl; the uniform block: GEMM_PARAMS
// (src/backend/kernels/gemm.ts).
//
// K lanes (KL > 1, GemmTile.KL): KL invocations share one block, lane l summing the groups of 4 k that
// start at k_begin + 4l, 4l + 4KL, ...; their partial sums are then added in workgroup memory (sum_lanes)
// and lane 0 stores the block. For the products one of whose sides is a LoRA rank on hardware GPUs:
// without lanes such a product has a few thousand blocks, too few invocations to keep a large GPU's
// memory busy. LANE_FAST: the lanes of a block are neighbouring invocations (A stored [m, k]: they read
// consecutive k of the block's rows); otherwise neighbouring invocations hold neighbouring blocks (A
// stored [k, m]: they read consecutive columns of each k row). Summation order differs from KL = 1's only
// as a split of k does.
// PAIR: two independent products of the same m, k, layout and element types in one dispatch, the
// workgroups at z = 1 running the second (gemm/pair.wgsl). The fused LoRA backward's dA = gᵀ·x and
// dBᵀ = tᵀ·dy are such a pair: each alone is too small to keep a large GPU busy, so its time is mostly
// the dispatch's fixed cost, which the pair pays once (bench/NOTES.md, twelfth session).

// This workgroup's product's columns, column blocks and blocks: the uniforms n, tiles_n and tiles, or
// under PAIR the copies gemm/pair.wgsl picked for its product.
fn dim_n() -> u32 {
//#if PAIR
  return pn;
//#else
  return p.n;
//#end
}

fn dim_tiles_n() -> u32 {
//#if PAIR
  return ptn;
//#else
  return p.tiles_n;
//#end
}

fn dim_tiles() -> u32 {
//#if PAIR
  return pt;
//#else
  return p.tiles;
//#end
}
//#if KL > 1
var<workgroup> red: array<vec4<f32>, ${WG * CH}>;

// Adds each of the S = (WG / KL) · CH slots' KL lane values (slot s of lane l at red[l · S + s]) into
// lane 0's: a tree of fan-in 8, one barrier a level. At level stride st an invocation reads lanes b, b + st,
// ..., b + 7st of one slot (b a multiple of 8st) and writes lane b only, which no other invocation of the
// level reads or writes, so a level needs no barrier inside it.
fn sum_lanes(lid: u32) {
  let slots = ${(WG / KL) * CH}u;
  for (var st = 1u; st < ${KL}u; st *= 8u) {
    workgroupBarrier();
    let groups = (${KL}u + 8u * st - 1u) / (8u * st);
    for (var item = lid; item < groups * slots; item += ${WG}u) {
      let base = (item / slots) * 8u * st;
      let slot = item % slots;
      var v = red[base * slots + slot];
      for (var q = 1u; q < 8u; q++) {
        let l = base + q * st;
        if (l < ${KL}u) {
          v += red[l * slots + slot];
        }
      }
      red[base * slots + slot] = v;
    }
  }
  workgroupBarrier();
}
//#end

// Stores v into columns col .. col + 3 of the row starting at element row_base (those inside the matrix).
fn store4(row_base: u32, col: u32, v: vec4<f32>) {
//#if VEC_C
  if (col < dim_n()) {
    c[(row_base + col) / 4u] = vec4<${C_T}>(v);
  }
//#else
  for (var q = 0u; q < 4u; q++) {
    if (col + q < dim_n()) {
      c[row_base + col + q] = ${C_T}(v[q]);
    }
  }
//#end
}

// Stores v into columns col .. col + 3 of row `row` of this workgroup's product (C at c_off; under PAIR
// the second product's C2, transposed).
fn store_row4(c_off: u32, row: u32, col: u32, v: vec4<f32>) {
//#if PAIR
  if (pair_second) {
    store_pair4(row, col, v);
    return;
  }
//#end
  store4(c_off + row * dim_n(), col, v);
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
//#if PAIR
  pair_setup(wid);
//#end
//#if KL == 1
  let tile = (wid.y * nwg.x + wid.x) * ${WG}u + lid;
  if (tile >= dim_tiles()) {
    return;
  }
  let lane_k = 0u;
//#else
//#if LANE_FAST
  let lane = lid % ${KL}u;
  let local_block = lid / ${KL}u;
//#else
  let lane = lid / ${WG / KL}u;
  let local_block = lid % ${WG / KL}u;
//#end
  // Every invocation reaches the barriers of sum_lanes: those past the last block compute a copy of it and
  // store nothing.
  let block = (wid.y * nwg.x + wid.x) * ${WG / KL}u + local_block;
  let tile = min(block, dim_tiles() - 1u);
  let lane_k = lane * 4u;
//#end
  let z = wid.z + p.z_base;
  let row0 = (tile / dim_tiles_n()) * ${TM}u;
  let col0 = (tile % dim_tiles_n()) * ${TN}u;
  // Clamped rows and columns for loads (stores skip the clamped ones), and the clamped starts of blocks of 4
  // for the vec4 forms along m or n (which imply m or n is a multiple of 4; unused otherwise).
//#for i in 0..TM
  let ar${i} = min(row0 + ${i}u, p.m - 1u);
//#end
//#for i in 0..TM / 4
  let ab${i} = min(row0 + ${i * 4}u, p.m - 4u);
//#end
//#for j in 0..TN
  let bc${j} = min(col0 + ${j}u, dim_n() - 1u);
//#end
//#for j in 0..TN / 4
  let bb${j} = min(col0 + ${j * 4}u, dim_n() - 4u);
//#end
//#for i in 0..TM
//#for jb in 0..TN / 4
  var acc_${i}_${jb} = vec4<f32>(0.0);
//#end
//#end
//#for ph in 0..2
//#if ph == 1 || LORA
  {
//#if ph == 0
    // Of a split-K dispatch's slices only the first takes the LoRA term (the reduce sums the slices).
    let k_begin = 0u;
    let k_end = select(0u, p.r, z == 0u);
    let depth = p.r;
    let a_off = 0u;
    let b_off = 0u;
//#else
    let k_begin = z * p.k_z_start;
    let k_end = min(p.k, k_begin + p.k_len);
    let depth = p.k;
    let a_off = z * p.a_z_stride;
    let b_off = z * p.b_z_stride;
//#end
    for (var k = k_begin + lane_k; k < k_end; k += ${4 * KL}u) {
//#for kk in 0..4
      let kc${kk} = min(k + ${kk}u, k_end - 1u);
      let kv${kk} = k + ${kk}u < k_end;
//#end
//#if ph == 0 && VEC_P
//#for i in 0..TM
      let fa${i} = load_p(ar${i} * depth + k);
//#end
//#for i in 0..TM
//#for kk in 0..4
      let a${i}_${kk} = fa${i}[${kk}];
//#end
//#end
//#elif ph == 0
//#for i in 0..TM
//#for kk in 0..4
      let a${i}_${kk} = select(0.0, load_p(ar${i} * depth + kc${kk}), kv${kk});
//#end
//#end
//#elif !TRANS_A && VEC_A
//#for i in 0..TM
      let fa${i} = load_a(a_off + ar${i} * depth + k);
//#end
//#for i in 0..TM
//#for kk in 0..4
      let a${i}_${kk} = fa${i}[${kk}];
//#end
//#end
//#elif !TRANS_A
//#for i in 0..TM
//#for kk in 0..4
      let a${i}_${kk} = select(0.0, load_a(a_off + ar${i} * depth + kc${kk}), kv${kk});
//#end
//#end
//#elif VEC_A
//#for kk in 0..4
//#for ib in 0..TM / 4
      let fa${kk}_${ib} = select(vec4<f32>(0.0), load_a(a_off + kc${kk} * p.m + ab${ib}), kv${kk});
//#end
//#end
//#for i in 0..TM
//#for kk in 0..4
      let a${i}_${kk} = fa${kk}_${i / 4}[${i % 4}];
//#end
//#end
//#else
//#for i in 0..TM
//#for kk in 0..4
      let a${i}_${kk} = select(0.0, load_a(a_off + kc${kk} * p.m + ar${i}), kv${kk});
//#end
//#end
//#end
//#if (ph == 0 && TRANS_B && VEC_Q) || (ph == 1 && TRANS_B && VEC_B)
//#for j in 0..TN
//#if ph == 0
      let fb${j} = load_q(bc${j} * depth + k);
//#else
      let fb${j} = load_b(b_off + bc${j} * depth + k);
//#end
//#end
//#for kk in 0..4
//#for jb in 0..TN / 4
      let b${kk}_${jb} = vec4<f32>(fb${jb * 4}[${kk}], fb${jb * 4 + 1}[${kk}], fb${jb * 4 + 2}[${kk}], fb${jb * 4 + 3}[${kk}]);
//#end
//#end
//#elif TRANS_B
//#for kk in 0..4
//#for j in 0..TN
//#if ph == 0
      let fb${kk}_${j} = select(0.0, load_q(bc${j} * depth + kc${kk}), kv${kk});
//#else
      let fb${kk}_${j} = select(0.0, load_b(b_off + bc${j} * depth + kc${kk}), kv${kk});
//#end
//#end
//#for jb in 0..TN / 4
      let b${kk}_${jb} = vec4<f32>(fb${kk}_${jb * 4}, fb${kk}_${jb * 4 + 1}, fb${kk}_${jb * 4 + 2}, fb${kk}_${jb * 4 + 3});
//#end
//#end
//#elif (ph == 0 && VEC_Q) || (ph == 1 && VEC_B)
//#for kk in 0..4
//#for jb in 0..TN / 4
//#if ph == 0
      let b${kk}_${jb} = select(vec4<f32>(0.0), load_q(kc${kk} * dim_n() + bb${jb}), kv${kk});
//#else
      let b${kk}_${jb} = select(vec4<f32>(0.0), load_b(b_off + kc${kk} * dim_n() + bb${jb}), kv${kk});
//#end
//#end
//#end
//#else
//#for kk in 0..4
//#for j in 0..TN
//#if ph == 0
      let fb${kk}_${j} = select(0.0, load_q(kc${kk} * dim_n() + bc${j}), kv${kk});
//#else
      let fb${kk}_${j} = select(0.0, load_b(b_off + kc${kk} * dim_n() + bc${j}), kv${kk});
//#end
//#end
//#for jb in 0..TN / 4
      let b${kk}_${jb} = vec4<f32>(fb${kk}_${jb * 4}, fb${kk}_${jb * 4 + 1}, fb${kk}_${jb * 4 + 2}, fb${kk}_${jb * 4 + 3});
//#end
//#end
//#end
//#for kk in 0..4
//#for i in 0..TM
//#for jb in 0..TN / 4
      acc_${i}_${jb} = fma(vec4<f32>(a${i}_${kk}), b${kk}_${jb}, acc_${i}_${jb});
//#end
//#end
//#end
    }
  }
//#if ph == 0
  // The LoRA term: scale times the dropout factors of the output elements it lands on.
//#for i in 0..TM
//#for jb in 0..TN / 4
//#if MASK
  acc_${i}_${jb} *= p.scale * factor4((row0 + ${i}u) * dim_n() + col0 + ${jb * 4}u);
//#else
  acc_${i}_${jb} *= p.scale;
//#end
//#end
//#end
//#end
//#end
//#end
  // The bias of the block's columns, loaded once (not once per row).
//#for jb in 0..TN / 4
//#if BIAS
  let bias${jb} = vec4<f32>(
    f32(bias[min(col0 + ${jb * 4}u, dim_n() - 1u)]),
    f32(bias[min(col0 + ${jb * 4 + 1}u, dim_n() - 1u)]),
    f32(bias[min(col0 + ${jb * 4 + 2}u, dim_n() - 1u)]),
    f32(bias[min(col0 + ${jb * 4 + 3}u, dim_n() - 1u)]),
  );
//#else
  let bias${jb} = vec4<f32>(0.0);
//#end
//#end
  let c_off = z * p.c_z_stride;
//#if KL > 1
  // The lanes' sums, CH vec4s of the block per invocation a round (value v is row v / (TN / 4), columns
  // 4 (v % (TN / 4)) on), lane 0 storing each round's totals.
//#for rd in 0..(TM * (TN / 4) + CH - 1) / CH
//#for c in 0..CH
//#if rd * CH + c < TM * (TN / 4)
  red[(lane * ${WG / KL}u + local_block) * ${CH}u + ${c}u] = acc_${(rd * CH + c) / (TN / 4)}_${(rd * CH + c) % (TN / 4)};
//#end
//#end
  sum_lanes(lid);
  if (lane == 0u && block < dim_tiles()) {
//#for c in 0..CH
//#if rd * CH + c < TM * (TN / 4)
    if (row0 + ${(rd * CH + c) / (TN / 4)}u < p.m) {
      store_row4(c_off, row0 + ${(rd * CH + c) / (TN / 4)}u, col0 + ${((rd * CH + c) % (TN / 4)) * 4}u,
        red[local_block * ${CH}u + ${c}u] * p.alpha + bias${(rd * CH + c) % (TN / 4)});
    }
//#end
//#end
  }
  workgroupBarrier();
//#end
//#else
  // The block is stored one row per loop trip, the rows shifting up after each: a software adapter compiles
  // a kernel when it first runs it, and one store per block element written out would be half the code.
  for (var i = 0u; i < ${TM}u; i++) {
    if (row0 + i < p.m) {
//#for jb in 0..TN / 4
      store_row4(c_off, row0 + i, col0 + ${jb * 4}u, acc_0_${jb} * p.alpha + bias${jb});
//#end
    }
//#for r in 0..TM - 1
//#for jb in 0..TN / 4
    acc_${r}_${jb} = acc_${r + 1}_${jb};
//#end
//#end
  }
//#end
}
