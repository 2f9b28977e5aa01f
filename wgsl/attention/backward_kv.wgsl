// Causal attention backward for keys and values, tiled: one workgroup per (block of BC key rows,
// key/value head, batch), iterating over the query rows of every head sharing that key/value head (read
// in place, nothing repeated) in tiles of BQ rows staged in workgroup memory with their dO rows,
// log-sum-exps and deltas. Each key row belongs to KS invocations that split every query tile (NQ rows
// each); an invocation keeps its key row (scaled) and the dk and dv accumulators in registers and reads
// its value row from workgroup memory (rows padded to an odd number of chunks, so that neighbouring
// invocations' rows fall in different banks). Per query: p = exp(s - lse), ds = p (dO · v - delta);
// dv += p dO, dk += scale · ds q. The KS partial sums are merged at the end. No atomics: each key row is
// written by one invocation. Only the query tiles that can see the block are visited, and with a padding
// mask those holding a row that sees no key (its weight is spread over all keys).
//#if VEC
@group(0) @binding(1) var<storage, read> q: array<vec4<${T}>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<${T}>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<${T}>>;
@group(0) @binding(4) var<storage, read> dout: array<vec4<${T}>>;
//#else
@group(0) @binding(1) var<storage, read> q: array<${T}>;
@group(0) @binding(2) var<storage, read> k: array<${T}>;
@group(0) @binding(3) var<storage, read> v: array<${T}>;
@group(0) @binding(4) var<storage, read> dout: array<${T}>;
//#end
@group(0) @binding(5) var<storage, read> lse: array<${L}>;
@group(0) @binding(6) var<storage, read> delta: array<${L}>;
@group(0) @binding(7) var<storage, read> kmask: array<u32>;
//#if VEC
@group(0) @binding(8) var<storage, read_write> dk: array<vec4<${T}>>;
@group(0) @binding(9) var<storage, read_write> dv: array<vec4<${T}>>;
//#else
@group(0) @binding(8) var<storage, read_write> dk: array<${T}>;
@group(0) @binding(9) var<storage, read_write> dv: array<${T}>;
//#end

// Value rows of the block (VP chunks apart); reused to merge the splits.
var<workgroup> vsh: array<vec4<f32>, ${BC * VP}>;
var<workgroup> qt: array<vec4<f32>, ${BQ * DV}>;
var<workgroup> gt: array<vec4<f32>, ${BQ * DV}>;
// Per staged query: 0 none (past the range), 1 normal, 2 sees no key; base-2 lse and delta.
var<workgroup> qstate: array<u32, ${BQ}>;
var<workgroup> qstat: array<vec2<f32>, ${BQ}>;
var<workgroup> tile_needed: u32;

fn store_dk(row: u32, c: u32, x: vec4<f32>) {
//#if VEC
  dk[row * ${DV}u + c] = vec4<${T}>(x);
//#else
  let at = row * ${D}u + c * 4u;
  if (c * 4u < ${D}u) {
    dk[at] = ${T}(x.x);
  }
  if (c * 4u + 1u < ${D}u) {
    dk[at + 1u] = ${T}(x.y);
  }
  if (c * 4u + 2u < ${D}u) {
    dk[at + 2u] = ${T}(x.z);
  }
  if (c * 4u + 3u < ${D}u) {
    dk[at + 3u] = ${T}(x.w);
  }
//#end
}

fn store_dv(row: u32, c: u32, x: vec4<f32>) {
//#if VEC
  dv[row * ${DV}u + c] = vec4<${T}>(x);
//#else
  let at = row * ${D}u + c * 4u;
  if (c * 4u < ${D}u) {
    dv[at] = ${T}(x.x);
  }
  if (c * 4u + 1u < ${D}u) {
    dv[at + 1u] = ${T}(x.y);
  }
  if (c * 4u + 2u < ${D}u) {
    dv[at + 2u] = ${T}(x.z);
  }
  if (c * 4u + 3u < ${D}u) {
    dv[at + 3u] = ${T}(x.w);
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
  // The first key blocks are seen by the most queries: they go first.
  let bk = wg % p.bk;
  let j0 = (wg / p.bk) * ${BC}u;
  let kvh = bk % p.kv_heads;
  let b = bk / p.kv_heads;
  let r = lid % ${BC}u;
  let sp = lid / ${BC}u;
  let j = j0 + r;
  let krow = bk * p.keys + min(j, p.keys - 1u);
  let kword = key_word(b, j);
  let kscale = p.scale * LOG2E;
//#for c in 0..DV
  let k_${c} = chunk_k(krow, ${c}u) * kscale;
  var dk_${c} = vec4<f32>(0.0);
  var dv_${c} = vec4<f32>(0.0);
//#end
  for (var e = lid; e < ${BC * DV}u; e += ${WG}u) {
    let rr = e / ${DV}u;
    let c = e % ${DV}u;
    var vc = vec4<f32>(0.0);
    if (j0 + rr < p.keys) {
      vc = chunk_v(bk * p.keys + j0 + rr, c);
    }
    vsh[rr * ${VP}u + c] = vc;
  }
  let group = p.heads / p.kv_heads;
  let past = p.keys - p.seq;
  // Queries that can see a key of the block: from the block's first position to the window's end. With a
  // padding mask, rows that see no key at all see every key: there all query tiles are candidates, and
  // those outside this range are skipped unless one of their rows has no key (lse = +inf).
  let nlo = select(0u, j0 - past, j0 > past);
  var nhi = p.seq;
  if (p.window > 0u) {
    let jl = min(j0 + ${BC}u, p.keys) - 1u;
    nhi = min(p.seq, select(0u, jl + p.window - past, jl + p.window > past));
  }
  var ilo = nlo;
  var ihi = nhi;
  if (p.has_mask != 0u) {
    ilo = 0u;
    ihi = p.seq;
  }
  let vr = r * ${VP}u;
  let qo = sp * ${NQ * DV}u;
  for (var g = 0u; g < group; g++) {
    let qrow0 = (b * p.heads + kvh * group + g) * p.seq;
    for (var i0 = ilo; i0 < ihi; i0 += ${BQ}u) {
      workgroupBarrier();
      if (p.has_mask != 0u) {
        if (lid == 0u) {
          var need = select(0u, 1u, i0 + ${BQ}u > nlo && i0 < nhi);
          for (var t = i0; need == 0u && t < min(i0 + ${BQ}u, p.seq); t++) {
            if (f32(lse[qrow0 + t]) > 3.0e38) {
              need = 1u;
            }
          }
          tile_needed = need;
        }
        if (workgroupUniformLoad(&tile_needed) == 0u) {
          continue;
        }
      }
      for (var e = lid; e < ${BQ * DV}u; e += ${WG}u) {
        let i = i0 + e / ${DV}u;
        let c = e % ${DV}u;
        var qc = vec4<f32>(0.0);
        var gc = vec4<f32>(0.0);
        if (i < ihi) {
          qc = chunk_q(qrow0 + i, c);
          gc = chunk_dout(qrow0 + i, c);
        }
        qt[e] = qc;
        gt[e] = gc;
      }
      for (var e = lid; e < ${BQ}u; e += ${WG}u) {
        let i = i0 + e;
        var st = 0u;
        var sv = vec2<f32>(0.0);
        if (i < ihi) {
          let ls = f32(lse[qrow0 + i]);
          let full = ls > 3.0e38;
          st = select(1u, 2u, full);
          sv = vec2<f32>(select(ls * LOG2E, log2(f32(p.keys)), full), f32(delta[qrow0 + i]));
        }
        qstate[e] = st;
        qstat[e] = sv;
      }
      workgroupBarrier();
//#for u in 0..NQ
      var s_${u} = 0.0;
      var dp_${u} = 0.0;
//#end
//#for c in 0..DV
      {
        let vc = vsh[vr + ${c}u];
//#for u in 0..NQ
        s_${u} += dot(k_${c}, qt[qo + ${u * DV + c}u]);
        dp_${u} += dot(vc, gt[qo + ${u * DV + c}u]);
//#end
      }
//#end
//#for u in 0..NQ
      let st_${u} = qstate[sp * ${NQ}u + ${u}u];
      let sv_${u} = qstat[sp * ${NQ}u + ${u}u];
      let full_${u} = st_${u} == 2u;
      let qa_${u} = past + i0 + sp * ${NQ}u + ${u}u;
      let see_${u} = select(st_${u} == 1u && kword == 3u && in_reach(qa_${u}, j), kword != 0u, full_${u});
      let pw_${u} = select(0.0, exp2(select(s_${u}, 0.0, full_${u}) - sv_${u}.x), see_${u});
      let ds_${u} = pw_${u} * (dp_${u} - sv_${u}.y);
//#end
//#for c in 0..DV
//#for u in 0..NQ
      dv_${c} += pw_${u} * gt[qo + ${u * DV + c}u];
      dk_${c} += ds_${u} * qt[qo + ${u * DV + c}u];
//#end
//#end
    }
  }
//#if KS > 1
  // Sum the KS partial gradients of each key row into its split-0 invocation, dk then dv.
//#for s in 1..KS
//#for which in 0..2
  workgroupBarrier();
  if (sp == ${s}u) {
//#for c in 0..DV
//#if which == 0
    vsh[vr + ${c}u] = dk_${c};
//#else
    vsh[vr + ${c}u] = dv_${c};
//#end
//#end
  }
  workgroupBarrier();
  if (sp == 0u) {
//#for c in 0..DV
//#if which == 0
    dk_${c} += vsh[vr + ${c}u];
//#else
    dv_${c} += vsh[vr + ${c}u];
//#end
//#end
  }
//#end
//#end
//#end
  if (sp != 0u || j >= p.keys) {
    return;
  }
//#for c in 0..DV
  store_dk(krow, ${c}u, dk_${c} * p.scale);
  store_dv(krow, ${c}u, dv_${c});
//#end
}
