// The LoRA pre-phase's operands, shared by both GEMM schedules: with LORA, the output kernel of the fused
// LoRA linear first accumulates P · op(Q) over depth p.r (P = lp [m, r] f32: x·Aᵀ in the forward, dy·B in
// the backward; Q = lq: lora_B in the forward, lora_A in the backward), scales it by p.scale and, with MASK,
// by the dropout factors of the output elements, then accumulates the base product on top
// (src/backend/webgpu/lora.ts lists the phases of the forward and backward). Q has its own element type
// Q_T: f32 adapters over an f16 base are read as f32.
//#if LORA && VEC_P
@group(0) @binding(3) var<storage, read> lp: array<vec4<f32>>;
//#elif LORA
@group(0) @binding(3) var<storage, read> lp: array<f32>;
//#end
//#if LORA && VEC_Q
@group(0) @binding(4) var<storage, read> lq: array<vec4<${Q_T}>>;
//#elif LORA
@group(0) @binding(4) var<storage, read> lq: array<${Q_T}>;
//#end

//#if LORA && VEC_P
fn load_p(at: u32) -> vec4<f32> {
  return lp[at / 4u];
}
//#elif LORA
fn load_p(at: u32) -> f32 {
  return lp[at];
}
//#end
//#if LORA && VEC_Q
fn load_q(at: u32) -> vec4<f32> {
  return vec4<f32>(lq[at / 4u]);
}
//#elif LORA
fn load_q(at: u32) -> f32 {
  return f32(lq[at]);
}
//#end
