// Causal attention backward for the queries, tiled as the forward (wgsl/attention/forward.wgsl): one
// workgroup per (block of BR query rows, head, batch), key and value tiles of BC rows staged once for the
// block, KS invocations per row splitting each tile's keys. Each invocation holds its row's q, dO and
// the dq accumulator in registers, recomputes each weight p = exp(s - lse) from the saved log-sum-exp,
// dp = dO · v and ds = p (dp - delta), and adds ds · k; delta = dO · O is computed here once per row and
// written for the key/value kernel. A block holding a row that saw no key (lse = +inf: uniform weights
// over all keys, scores held at one value) visits every key tile.
//#if VEC
@group(0) @binding(1) var<storage, read> q: array<vec4<${T}>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<${T}>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<${T}>>;
@group(0) @binding(4) var<storage, read> o: array<vec4<${T}>>;
@group(0) @binding(5) var<storage, read> dout: array<vec4<${T}>>;
//#else
@group(0) @binding(1) var<storage, read> q: array<${T}>;
@group(0) @binding(2) var<storage, read> k: array<${T}>;
@group(0) @binding(3) var<storage, read> v: array<${T}>;
@group(0) @binding(4) var<storage, read> o: array<${T}>;
@group(0) @binding(5) var<storage, read> dout: array<${T}>;
//#end
@group(0) @binding(6) var<storage, read> lse: array<${L}>;
@group(0) @binding(7) var<storage, read> kmask: array<u32>;
//#if VEC
@group(0) @binding(8) var<storage, read_write> dq: array<vec4<${T}>>;
//#else
@group(0) @binding(8) var<storage, read_write> dq: array<${T}>;
//#end
@group(0) @binding(9) var<storage, read_write> delta: array<${L}>;

var<workgroup> tile: array<vec4<f32>, ${TILE}>;
var<workgroup> kw: array<u32, ${BC}>;
var<workgroup> any_full: u32;

fn store_dq(row: u32, c: u32, x: vec4<f32>) {
//#if VEC
  dq[row * ${DV}u + c] = vec4<${T}>(x);
//#else
  let at = row * ${D}u + c * 4u;
  if (c * 4u < ${D}u) {
    dq[at] = ${T}(x.x);
  }
  if (c * 4u + 1u < ${D}u) {
    dq[at + 1u] = ${T}(x.y);
  }
  if (c * 4u + 2u < ${D}u) {
    dq[at + 2u] = ${T}(x.z);
  }
  if (c * 4u + 3u < ${D}u) {
    dq[at + 3u] = ${T}(x.w);
  }
//#end
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let wg = flat_group(wid, nwg);
  if (wg >= p.groups) {
    return;
  }
  let bh = wg % p.bh;
  let qb = p.q_blocks - 1u - wg / p.bh;
  let h = bh % p.heads;
  let b = bh / p.heads;
  let r = lid % ${BR}u;
  let sp = lid / ${BR}u;
  let i0 = qb * ${BR}u;
  let i = min(i0 + r, p.seq - 1u);
  let row = bh * p.seq + i;
  let kv0 = (b * p.kv_heads + h / (p.heads / p.kv_heads)) * p.keys;
  let past = p.keys - p.seq;
  let qa = past + i;
  let qscale = p.scale * LOG2E;
  var dl = 0.0;
//#for c in 0..DV
  let q_${c} = chunk_q(row, ${c}u) * qscale;
  let g_${c} = chunk_dout(row, ${c}u);
  dl += dot(g_${c}, chunk_o(row, ${c}u));
  var dq_${c} = vec4<f32>(0.0);
//#end
  let lse_row = f32(lse[row]);
  let full = lse_row > 3.0e38;
  // Base 2, like the scores; a row without keys has weight 1 / keys everywhere.
  let lse2 = select(lse_row * LOG2E, log2(f32(p.keys)), full);
  if (lid == 0u) {
    var f = 0u;
    for (var t = i0; t < min(i0 + ${BR}u, p.seq); t++) {
      if (f32(lse[bh * p.seq + t]) > 3.0e38) {
        f = 1u;
      }
    }
    any_full = f;
  }
  var lo = first_key(past + i0);
  var hi = past + min(i0 + ${BR}u, p.seq);
  if (workgroupUniformLoad(&any_full) != 0u) {
    lo = 0u;
    hi = p.keys;
  }
  let kb = sp * ${NK * DV}u;
  for (var j0 = lo; j0 < hi; j0 += ${BC}u) {
    workgroupBarrier();
    for (var e = lid; e < ${BC * DV}u; e += ${WG}u) {
      let j = j0 + e / ${DV}u;
      let c = e % ${DV}u;
      var kc = vec4<f32>(0.0);
      var vc = vec4<f32>(0.0);
      if (j < p.keys) {
        kc = chunk_k(kv0 + j, c);
        vc = chunk_v(kv0 + j, c);
      }
      tile[e] = kc;
      tile[${BC * DV}u + e] = vc;
    }
    for (var e = lid; e < ${BC}u; e += ${WG}u) {
      kw[e] = key_word(b, j0 + e);
    }
    workgroupBarrier();
//#for u in 0..NK
    var s_${u} = 0.0;
    var dp_${u} = 0.0;
//#for c in 0..DV
    s_${u} += dot(q_${c}, tile[kb + ${u * DV + c}u]);
    dp_${u} += dot(g_${c}, tile[${BC * DV}u + kb + ${u * DV + c}u]);
//#end
    let w_${u} = kw[sp * ${NK}u + ${u}u];
    let see_${u} = select(w_${u} == 3u && in_reach(qa, j0 + sp * ${NK}u + ${u}u), w_${u} != 0u, full);
    let ds_${u} = select(0.0, exp2(select(s_${u}, 0.0, full) - lse2) * (dp_${u} - dl), see_${u});
//#end
//#for u in 0..NK
//#for c in 0..DV
    dq_${c} += ds_${u} * tile[kb + ${u * DV + c}u];
//#end
//#end
  }
//#if KS > 1
  // Sum the KS partial gradients of each row into its split-0 invocation.
//#for s in 1..KS
//#for part in 0..NPART
  workgroupBarrier();
  if (sp == ${s}u) {
//#for c in part * CC..(part + 1) * CC
//#if c < DV
    tile[r * ${CC}u + ${c - part * CC}u] = dq_${c};
//#end
//#end
  }
  workgroupBarrier();
  if (sp == 0u) {
//#for c in part * CC..(part + 1) * CC
//#if c < DV
    dq_${c} += tile[r * ${CC}u + ${c - part * CC}u];
//#end
//#end
  }
//#end
//#end
//#end
  if (sp != 0u || i0 + r >= p.seq) {
    return;
  }
//#for c in 0..DV
  store_dq(row, ${c}u, dq_${c} * p.scale);
//#end
  delta[row] = ${L}(dl);
}
