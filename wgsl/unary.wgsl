// out[i] = f(x[i]) for the element-wise function named by OP (the UnaryOp names of backend.ts).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;

// sin and cos are computed here rather than by the builtins, whose accuracy WGSL leaves to the
// implementation (an absolute error of 2^-11 on [-pi, pi] is allowed; Dawn over SwiftShader measured 1.4e-4
// relative error on one element against the CPU): the angle is reduced to [-pi, pi] (2 pi in two parts,
// Cody-Waite, so k * TWO_PI_HI is exact), then by quadrant to |r| <= pi/4 (pi/2 in three parts), where
// minimax polynomials of degree 7 (sin) and 8 (cos) are good to about an ulp (coefficients of Cephes'
// single-precision sinf/cosf).
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
fn reduce_angle(v: f32) -> f32 {
  let k = round(v * 0.15915494309189535);
  return (v - k * TWO_PI_HI) - k * TWO_PI_LO;
}

fn sin_poly(r: f32) -> f32 {
  let z = r * r;
  return r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
}

fn cos_poly(r: f32) -> f32 {
  let z = r * r;
  return 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
}

// (sin v, cos v).
fn sin_cos(v: f32) -> vec2<f32> {
  let a = reduce_angle(v);
  let q = round(a * 0.6366197723675814);
  let r = ((a - q * 1.5703125) - q * 4.837512969970703e-4) - q * 7.549789954891882e-8;
  let s = sin_poly(r);
  let c = cos_poly(r);
  // a = q pi/2 + r with q in -2..2: quadrant 0 (s, c), 1 (c, -s), 2 (-s, -c), 3 (-c, s).
  let quadrant = (i32(q) + 4) % 4;
  if (quadrant == 1) {
    return vec2<f32>(c, -s);
  }
  if (quadrant == 2) {
    return vec2<f32>(-s, -c);
  }
  if (quadrant == 3) {
    return vec2<f32>(-c, s);
  }
  return vec2<f32>(s, c);
}

fn sigmoid(v: f32) -> f32 {
  return 1.0 / (1.0 + exp(-v));
}

fn f(v: f32) -> f32 {
//#if OP == "neg"
  return -v;
//#elif OP == "exp"
  return exp(v);
//#elif OP == "log"
  return log(v);
//#elif OP == "sqrt"
  return sqrt(v);
//#elif OP == "rsqrt"
  return 1.0 / sqrt(v);
//#elif OP == "sigmoid"
  return sigmoid(v);
//#elif OP == "silu"
  return v * sigmoid(v);
//#elif OP == "siluGrad"
  let s = sigmoid(v);
  return s * (1.0 + v * (1.0 - s));
//#elif OP == "relu"
  return select(0.0, v, v > 0.0);
//#elif OP == "step"
  return select(0.0, 1.0, v > 0.0);
//#elif OP == "square"
  return v * v;
//#elif OP == "recip"
  return 1.0 / v;
//#elif OP == "abs"
  return abs(v);
//#elif OP == "sin"
  return sin_cos(v).x;
//#elif OP == "cos"
  return sin_cos(v).y;
//#end
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_index(wid, nwg, lid, ${WG}u);
  if (i < p.n) {
    y[i] = ${T}(f(f32(x[i])));
  }
}
