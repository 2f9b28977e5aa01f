// GEMM for hardware GPUs: C[z] = alpha · op(A[z]) · op(B[z]), plus the optional LoRA pre-phase of the fused
// linear. Same contract, parameters and bindings as gemm/direct.wgsl (read its header for the layouts,
// VEC_* flags, split-K, masks and the LoRA phase); only the schedule differs.
//
// A workgroup computes a BM × BN block of C from BK-deep slabs staged in workgroup memory, in STAGES
// buffers: 2 double-buffers (the next slab is fetched from storage into registers while the current one
// is multiplied; one barrier per slab); 1 fetches and stores each slab, then multiplies it, two barriers
// per slab but no staging registers held over the multiply (GemmTile.STAGES). Each invocation keeps a
// TM × TN register tile as separately named vec4 accumulators, every
// loop over it unrolled by the template: private arrays indexed in loops end up in slow local memory.
// The invocation's rows are TM / 4 groups of 4 spread BM / (TM / 4) apart (columns likewise), so that
// neighbouring invocations read neighbouring vec4s of the slabs.

// STAGES slabs each, indexed [buffer][kk][group][invocation]: element (kk, r) of buffer s is
// a_tile[s][kk].v[(r / 4) / (BM / TM)][(r / 4) % (BM / TM)][r % 4] (b_tile likewise with BN / TN). The
// multiply indexes kk and the group with constants and the last with the invocation's own ty (tx): WGSL
// implementations clamp every dynamic index, and a clamp of ty is loop-invariant, computed once (the
// buffer's once per slab), where a clamp of "buffer base + ty + offset" cost an add and a min before each
// of the loop's loads (4096³ on the H200: 4.10-4.22 ms against 4.30-4.37 on Deno's WebGPU, bench/NOTES.md).
//
// Each kk row is padded by one vec4 (the structs' `pad`). Staging an operand whose k is contiguous in storage
// (x in x·Wᵀ, W too) transposes it: an invocation's vec4 of 4 k becomes 4 scalar stores, one per kk row,
// and the 32 invocations of a subgroup store 8 rows at 4 kk quads (BK 16) or 16 rows at 2 (BK 8). Unpadded,
// every kk row starts on the same bank, so the quads' stores collide on 8 (16) banks: 4-way (2-way)
// conflicts. One vec4 of padding moves kk row q by 4 banks: 2-way (no) conflicts.
struct ASlabRow {
  v: array<array<vec4<f32>, ${BM / TM}>, ${TM / 4}>,
  pad: vec4<f32>,
}
struct BSlabRow {
  v: array<array<vec4<f32>, ${BN / TN}>, ${TN / 4}>,
  pad: vec4<f32>,
}
var<workgroup> a_tile: array<array<ASlabRow, ${BK}>, ${STAGES}>;
var<workgroup> b_tile: array<array<BSlabRow, ${BK}>, ${STAGES}>;

// Padding leaves BK 16's transposed stores 2-way: kk quads 0 and 2 (and 1 and 3) of a subgroup's 8 rows
// land 32 banks apart. With SWIZZLE (GemmProfile.slabSwizzle), in every second group of 8 kk rows the vec4
// slots of a group are swizzled (slot i holds what slot i ^ 2 would), moving those rows' stores by 8 banks:
// conflict-free. The multiply reads those kk rows at ty ^ 2 (tx ^ 2), computed once. Groups of fewer than 4
// slots are not swizzled. On the H200 this gained 5% on Dawn (Tint) and lost 0-2% on Deno's WebGPU (Naga)
// at 4096³ (bench/NOTES.md, sixth session), so it is a per-adapter choice.
//#if SWIZZLE && BM / TM >= 4
const A_SWIZZLE = 2u;
//#else
const A_SWIZZLE = 0u;
//#end
//#if SWIZZLE && BN / TN >= 4
const B_SWIZZLE = 2u;
//#else
const B_SWIZZLE = 0u;
//#end
fn swizzle(kk: u32, s: u32) -> u32 {
  return ((kk >> 3u) & 1u) * s;
}

fn store4(row_base: u32, col: u32, v: vec4<f32>) {
//#if BIAS
  let bv = vec4<f32>(
    f32(bias[min(col, p.n - 1u)]),
    f32(bias[min(col + 1u, p.n - 1u)]),
    f32(bias[min(col + 2u, p.n - 1u)]),
    f32(bias[min(col + 3u, p.n - 1u)]),
  );
  let o = v * p.alpha + bv;
//#else
  let o = v * p.alpha;
//#end
//#if VEC_C
  if (col < p.n) {
    c[(row_base + col) / 4u] = vec4<${C_T}>(o);
  }
//#else
  for (var q = 0u; q < 4u; q++) {
    if (col + q < p.n) {
      c[row_base + col + q] = ${C_T}(o[q]);
    }
  }
//#end
}

// STREAM_K (GemmPlan.streamK): p.sk_groups persistent workgroups, each running a contiguous share of the
// tiles' k slabs (gemm/stream_k.wgsl); a run covering a whole tile stores it as usual, any other leaves
// its f32 partial tile in `part` (gemm/stream_k_part.wgsl) for gemm/stream_k_fixup.wgsl.
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
//#if STREAM_K
  // Workgroups 0 .. p.sk_dp - 1 run one whole tile each; the next p.sk_groups their stream-K shares.
  let g = wid.y * nwg.x + wid.x;
  let w = g - min(g, p.sk_dp);
  if (g >= p.sk_dp && w >= p.sk_groups) {
    return;
  }
  let it_begin = select(sk_start(w), g * p.sk_slabs, g < p.sk_dp);
  let it_end = select(sk_start(w + 1u), (g + 1u) * p.sk_slabs, g < p.sk_dp);
  var it = it_begin;
  // One trip per run: the part of one tile's slabs [s0, s1) that falls in this workgroup's share.
  loop {
    if (it >= it_end) {
      break;
    }
    let tile = it / p.sk_slabs;
    let s0 = it - tile * p.sk_slabs;
    let s1 = min(p.sk_slabs, s0 + (it_end - it));
    let first_run = it == it_begin;
    it += s1 - s0;
//#else
  let tile = wid.y * nwg.x + wid.x;
  if (tile >= p.tiles) {
    return;
  }
//#end
  let z = wid.z + p.z_base;
  let row0 = (tile / p.tiles_n) * ${BM}u;
  let col0 = (tile % p.tiles_n) * ${BN}u;
  let tx = lid % ${BN / TN}u;
  let ty = lid / ${BN / TN}u;
  let tx_sw = tx ^ B_SWIZZLE;
  let ty_sw = ty ^ A_SWIZZLE;
//#for i in 0..TM
//#for h in 0..TN / 4
  var acc_${i}_${h} = vec4<f32>(0.0);
//#end
//#end
//#for ph in 0..2
//#if ph == 1 || LORA
  {
//#if ph == 0
    // Of a split-K dispatch's slices only the first takes the LoRA term (the reduce sums the slices), and
    // of a stream-K tile's runs only the one from slab 0 (the fix-up sums the runs).
    let k_begin = 0u;
//#if STREAM_K
    let k_end = select(0u, p.r, s0 == 0u);
//#else
    let k_end = select(0u, p.r, z == 0u);
//#end
    let depth = p.r;
    let a_off = 0u;
    let b_off = 0u;
//#elif STREAM_K
    let k_begin = s0 * ${BK}u;
    let k_end = min(p.k, s1 * ${BK}u);
    let depth = p.k;
    let a_off = 0u;
    let b_off = 0u;
//#else
    let k_begin = z * p.k_z_start;
    let k_end = min(p.k, k_begin + p.k_len);
    let depth = p.k;
    let a_off = z * p.a_z_stride;
    let b_off = z * p.b_z_stride;
//#end
    // Staging registers of one slab: LA (LB) vec4s of A (B) per invocation.
//#for l in 0..LA
    var sa${l} = vec4<f32>(0.0);
//#end
//#for l in 0..LB
    var sb${l} = vec4<f32>(0.0);
//#end
    // Double-buffered, step s fetches slab s from storage into the staging registers (zeros outside the
    // matrices), multiplies slab s - 1 (staged in buffer (s - 1) % 2) meanwhile, then stages slab s into
    // buffer s % 2: the other buffer, last read in step s - 1, before the barrier that ended it. (Unrolling
    // two steps per iteration, to make the buffer numbers constants too, ran 1.5x slower on the H200:
    // bench/NOTES.md.) Single-buffered, step s fetches and stages slab s, then multiplies it, between
    // barriers. The multiply is written once; `pos` places it before the stores or after them.
    // On the H200 single buffers with BK = 16 beat double buffers with BK = 8 on Deno's WebGPU (3.64 against
    // 4.11 ms at 4096³ x·W) and tie on Dawn; double buffers with BK = 16 lose on both (they hold twice the
    // staging registers over the multiply): bench/NOTES.md, fifth session.
    let slabs = (k_end - min(k_begin, k_end) + ${BK - 1}u) / ${BK}u;
    for (var s = 0u; s < slabs + ${STAGES - 1}u; s++) {
      {
//#if STAGES == 2
        let mul_buf = (s + 1u) % 2u;
        let stage_buf = s % 2u;
//#else
        let mul_buf = 0u;
        let stage_buf = 0u;
//#end
        let k0 = k_begin + s * ${BK}u;
        if (s < slabs) {
//#for l in 0..LA
          {
            let e = ${l * WG}u + lid;
//#if (ph == 0 && VEC_P) || (ph == 1 && !TRANS_A && VEC_A)
            // 4 consecutive k of one row.
            let r = e / ${BK / 4}u;
            let kk = (e % ${BK / 4}u) * 4u;
            let gr = row0 + r;
            let gk = k0 + kk;
            if (gr < p.m && gk < k_end) {
//#if ph == 0
              sa${l} = load_p(gr * depth + gk);
//#else
              sa${l} = load_a(a_off + gr * depth + gk);
//#end
            } else {
              sa${l} = vec4<f32>(0.0);
            }
//#elif ph == 1 && TRANS_A && VEC_A
            // 4 consecutive rows at one k.
            let kk = e / ${BM / 4}u;
            let r = (e % ${BM / 4}u) * 4u;
            let gr = row0 + r;
            let gk = k0 + kk;
            if (gr < p.m && gk < k_end) {
              sa${l} = load_a(a_off + gk * p.m + gr);
            } else {
              sa${l} = vec4<f32>(0.0);
            }
//#else
            // Scalar loads, 4 consecutive k of one row.
            let r = e / ${BK / 4}u;
            let kk = (e % ${BK / 4}u) * 4u;
            let gr = row0 + r;
            for (var q = 0u; q < 4u; q++) {
              let gk = k0 + kk + q;
              var v = 0.0;
              if (gr < p.m && gk < k_end) {
//#if ph == 0
                v = load_p(gr * depth + gk);
//#elif TRANS_A
                v = load_a(a_off + gk * p.m + gr);
//#else
                v = load_a(a_off + gr * depth + gk);
//#end
              }
              sa${l}[q] = v;
            }
//#end
          }
//#end
//#for l in 0..LB
          {
            let e = ${l * WG}u + lid;
//#if (ph == 0 && TRANS_B && VEC_Q) || (ph == 1 && TRANS_B && VEC_B)
            // 4 consecutive k of one column.
            let cc = e / ${BK / 4}u;
            let kk = (e % ${BK / 4}u) * 4u;
            let gc = col0 + cc;
            let gk = k0 + kk;
            if (gc < p.n && gk < k_end) {
//#if ph == 0
              sb${l} = load_q(gc * depth + gk);
//#else
              sb${l} = load_b(b_off + gc * depth + gk);
//#end
            } else {
              sb${l} = vec4<f32>(0.0);
            }
//#elif (ph == 0 && VEC_Q) || (ph == 1 && VEC_B)
            // 4 consecutive columns at one k.
            let kk = e / ${BN / 4}u;
            let cc = (e % ${BN / 4}u) * 4u;
            let gc = col0 + cc;
            let gk = k0 + kk;
            if (gc < p.n && gk < k_end) {
//#if ph == 0
              sb${l} = load_q(gk * p.n + gc);
//#else
              sb${l} = load_b(b_off + gk * p.n + gc);
//#end
            } else {
              sb${l} = vec4<f32>(0.0);
            }
//#else
            // Scalar loads, 4 consecutive columns at one k.
            let kk = e / ${BN / 4}u;
            let cc = (e % ${BN / 4}u) * 4u;
            let gk = k0 + kk;
            for (var q = 0u; q < 4u; q++) {
              let gc = col0 + cc + q;
              var v = 0.0;
              if (gc < p.n && gk < k_end) {
//#if ph == 0 && TRANS_B
                v = load_q(gc * depth + gk);
//#elif ph == 0
                v = load_q(gk * p.n + gc);
//#elif TRANS_B
                v = load_b(b_off + gc * depth + gk);
//#else
                v = load_b(b_off + gk * p.n + gc);
//#end
              }
              sb${l}[q] = v;
            }
//#end
          }
//#end
        }
//#for pos in 0..2
//#if pos == 1
        if (s < slabs) {
//#for l in 0..LA
          {
            let e = ${l * WG}u + lid;
//#if ph == 1 && TRANS_A && VEC_A
            let kk = e / ${BM / 4}u;
            let r4 = e % ${BM / 4}u;
            a_tile[stage_buf][kk].v[r4 / ${BM / TM}u][(r4 % ${BM / TM}u) ^ swizzle(kk, A_SWIZZLE)] = sa${l};
//#else
            let r = e / ${BK / 4}u;
            let kk = (e % ${BK / 4}u) * 4u;
            let g = (r / 4u) / ${BM / TM}u;
            let i = ((r / 4u) % ${BM / TM}u) ^ swizzle(kk, A_SWIZZLE);
            a_tile[stage_buf][kk].v[g][i][r % 4u] = sa${l}.x;
            a_tile[stage_buf][kk + 1u].v[g][i][r % 4u] = sa${l}.y;
            a_tile[stage_buf][kk + 2u].v[g][i][r % 4u] = sa${l}.z;
            a_tile[stage_buf][kk + 3u].v[g][i][r % 4u] = sa${l}.w;
//#end
          }
//#end
//#for l in 0..LB
          {
            let e = ${l * WG}u + lid;
//#if (ph == 0 && TRANS_B && VEC_Q) || (ph == 1 && TRANS_B && VEC_B)
            let cc = e / ${BK / 4}u;
            let kk = (e % ${BK / 4}u) * 4u;
            let h = (cc / 4u) / ${BN / TN}u;
            let j = ((cc / 4u) % ${BN / TN}u) ^ swizzle(kk, B_SWIZZLE);
            b_tile[stage_buf][kk].v[h][j][cc % 4u] = sb${l}.x;
            b_tile[stage_buf][kk + 1u].v[h][j][cc % 4u] = sb${l}.y;
            b_tile[stage_buf][kk + 2u].v[h][j][cc % 4u] = sb${l}.z;
            b_tile[stage_buf][kk + 3u].v[h][j][cc % 4u] = sb${l}.w;
//#else
            let kk = e / ${BN / 4}u;
            let c4 = e % ${BN / 4}u;
            b_tile[stage_buf][kk].v[c4 / ${BN / TN}u][(c4 % ${BN / TN}u) ^ swizzle(kk, B_SWIZZLE)] = sb${l};
//#end
          }
//#end
        }
        workgroupBarrier();
//#end
//#if (pos == 0 && STAGES == 2) || (pos == 1 && STAGES == 1)
        if (s >= ${STAGES - 1}u) {
//#for kk in 0..BK
          {
//#for g in 0..TM / 4
//#if (kk / 8) % 2 == 1
            let av${g} = a_tile[mul_buf][${kk}].v[${g}][ty_sw];
//#else
            let av${g} = a_tile[mul_buf][${kk}].v[${g}][ty];
//#end
//#end
//#for h in 0..TN / 4
//#if (kk / 8) % 2 == 1
            let bv${h} = b_tile[mul_buf][${kk}].v[${h}][tx_sw];
//#else
            let bv${h} = b_tile[mul_buf][${kk}].v[${h}][tx];
//#end
//#end
//#for i in 0..TM
//#for h in 0..TN / 4
            acc_${i}_${h} = fma(vec4<f32>(av${i / 4}[${i % 4}]), bv${h}, acc_${i}_${h});
//#end
//#end
          }
//#end
        }
//#if STAGES == 1
        workgroupBarrier();
//#end
//#end
//#end
      }
    }
  }
//#if ph == 0
//#for i in 0..TM
//#for h in 0..TN / 4
//#if MASK
  acc_${i}_${h} *= p.scale * factor4((row0 + (ty + ${(i / 4) * (BM / TM)}u) * 4u + ${i % 4}u) * p.n + col0 + (tx + ${h * BN / TN}u) * 4u);
//#else
  acc_${i}_${h} *= p.scale;
//#end
//#end
//#end
//#end
//#end
//#end
  let c_off = z * p.c_z_stride;
//#if STREAM_K
  if (s0 != 0u || s1 != p.sk_slabs) {
    // A partial run: its tile, raw (no alpha, no bias), at its slot, row-major within the tile.
    let at = sk_slot(w, first_run) * ${BM * BN / 4}u;
//#for i in 0..TM
//#for h in 0..TN / 4
    part[at + ((ty + ${(i / 4) * (BM / TM)}u) * 4u + ${i % 4}u) * ${BN / 4}u + tx + ${h * BN / TN}u] = acc_${i}_${h};
//#end
//#end
    continue;
  }
//#end
//#for i in 0..TM
  {
    let row = row0 + (ty + ${(i / 4) * (BM / TM)}u) * 4u + ${i % 4}u;
    if (row < p.m) {
//#for h in 0..TN / 4
      store4(c_off + row * p.n, col0 + (tx + ${h * BN / TN}u) * 4u, acc_${i}_${h});
//#end
    }
  }
//#end
//#if STREAM_K
  }
//#end
}
