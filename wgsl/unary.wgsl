// out[i] = f(x[i]) for the element-wise function named by OP (the UnaryOp names of backend.ts).
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;

// sin and cos lose accuracy far from zero on some GPUs (RoPE feeds them large angles), so reduce the
// argument to [-pi, pi] first: 2 pi split in two parts (Cody-Waite) keeps k * TWO_PI_HI exact.
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
fn reduce_angle(v: f32) -> f32 {
  let k = round(v * 0.15915494309189535);
  return (v - k * TWO_PI_HI) - k * TWO_PI_LO;
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
  return sin(reduce_angle(v));
//#elif OP == "cos"
  return cos(reduce_angle(v));
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
