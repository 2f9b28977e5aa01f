// Contiguous copy with permuted axes: out[i] = x[src(i)], where src sums i's output coordinates times
// the input strides of the axes they came from. Shapes arrive collapsed to at most MAX_RANK axes.
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i >= p.n) {
    return;
  }
  var rest = i;
  var src = 0u;
  for (var d = i32(p.rank) - 1; d >= 0; d--) {
    let q = u32(d) / 4u;
    let r = u32(d) % 4u;
    let extent = p.shape[q][r];
    src += (rest % extent) * p.src_strides[q][r];
    rest = rest / extent;
  }
  y[i] = x[src];
}
