// Rotary embedding with the head split folded in (src/backend/kernels/rope.ts). Each invocation writes one
// element of y in its layout ([batch, heads, seq, dim] when p.out_heads_first, else [batch, seq, heads, dim])
// from x in its own layout, so the permute between the projection's [batch, seq, heads·dim] and
// attention's [batch, heads, seq, dim] costs nothing. With h = dim / 2 and rotate_half(x) = (−x₂, x₁):
//   forward:  y[i] = T(T(x[i] · cos[i]) + T(rot[i] · sin[i])), rot[i] = −x[i + h] (i < h), x[i − h] (i ≥ h)
//   BACKWARD: y[i] = T(T(x[i] · cos[i]) + T(x[i + h] · sin[i + h])) (i < h), −T(x[i − h] · sin[i − h]) after
// (the transpose of the forward's linear map; x is then the output gradient). cos and sin are
// [batch or 1, seq, dim]; roundings are where the composition stores (no-ops for f32).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> cs: array<${T}>;
@group(0) @binding(3) var<storage, read> sn: array<${T}>;
@group(0) @binding(4) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let o = flat_index(wid, nwg, lid, ${WG}u);
  if (o >= p.n) {
    return;
  }
  let d = p.dim;
  let i = o % d;
  let rest = o / d;
  var t: u32;
  var hd: u32;
  var b: u32;
  if (p.out_heads_first != 0u) {
    t = rest % p.seq;
    hd = (rest / p.seq) % p.heads;
    b = rest / (p.seq * p.heads);
  } else {
    hd = rest % p.heads;
    t = (rest / p.heads) % p.seq;
    b = rest / (p.seq * p.heads);
  }
  var src = ((b * p.seq + t) * p.heads + hd) * d;
  if (p.in_heads_first != 0u) {
    src = ((b * p.heads + hd) * p.seq + t) * d;
  }
  let tab = (b * p.cos_batch * p.seq + t) * d;
  let h = d / 2u;
  let a = f32(${T}(f32(x[src + i]) * f32(cs[tab + i])));
//#if BACKWARD
  var r: f32;
  if (i < h) {
    r = f32(${T}(f32(x[src + i + h]) * f32(sn[tab + i + h])));
  } else {
    r = -f32(${T}(f32(x[src + i - h]) * f32(sn[tab + i - h])));
  }
//#else
  var xr: f32;
  if (i < h) {
    xr = -f32(x[src + i + h]);
  } else {
    xr = f32(x[src + i - h]);
  }
  let r = f32(${T}(xr * f32(sn[tab + i])));
//#end
  y[o] = ${T}(a + r);
}
