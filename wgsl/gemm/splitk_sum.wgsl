// The sum of a split-K GEMM's slices, shared by gemm/splitk_reduce.wgsl and gemm/splitk_reduce_bias.wgsl:
// sum over s of part[s · n + i], taken in slice order as the CPU reference does. The includer declares
// `part` (the f32 partial sums, slice after slice).
//
// G = 1: each lane owns one output and adds its slices straight from storage. G > 1 (many slices): a
// workgroup owns OUTS = WG / G consecutive outputs, and its lanes fetch the slices of those outputs in
// rounds of G · CH: lane (o, j) fetches slices j, j + G, ... of output o, CH per round, into workgroup
// memory, then lane (o, 0) adds the round's slices in order. All loads of a round are in flight at once,
// where one lane summing a few dozen slices one load after another took 10-15 µs for 8 K outputs on the
// H200 (32-64 workgroups, each a chain of loads); for 2-8 slices of many outputs the direct sum is faster
// (bench/NOTES.md, sixth session). Lanes of one subgroup share j and read consecutive o: each of its loads
// is one contiguous run of part.

//#if G > 1
var<workgroup> staged: array<f32, ${G * CH * (WG / G)}>;
//#end

// The output this lane owns and, for lane (o, 0) of an output inside n, its sum (`owner`).
struct SliceSum {
  i: u32,
  acc: f32,
  owner: bool,
}

fn sum_slices(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> SliceSum {
//#if G == 1
  let i = flat_index(wid, nwg, lid, ${WG}u);
  var acc = 0.0;
  if (i < p.n) {
    for (var s = 0u; s < p.splits; s++) {
      acc += part[s * p.n + i];
    }
  }
  return SliceSum(i, acc, i < p.n);
//#else
  let o = lid % ${WG / G}u;
  let j = lid / ${WG / G}u;
  let i = flat_group(wid, nwg) * ${WG / G}u + o;
  var acc = 0.0;
  // Every lane runs every round (the barriers need uniform control flow); lanes past the end fetch nothing.
  for (var base = 0u; base < p.splits; base += ${G * CH}u) {
//#for q in 0..CH
    {
      let s = base + ${q * G}u + j;
      if (s < p.splits && i < p.n) {
        staged[(s - base) * ${WG / G}u + o] = part[s * p.n + i];
      }
    }
//#end
    workgroupBarrier();
    if (j == 0u) {
      let count = min(${G * CH}u, p.splits - base);
      for (var t = 0u; t < count; t++) {
        acc += staged[t * ${WG / G}u + o];
      }
    }
    workgroupBarrier();
  }
  return SliceSum(i, acc, j == 0u && i < p.n);
//#end
}
