/**
 * The GEMM kernel templates: C[z] = alpha · op(A[z]) · op(B[z]), with an optional LoRA pre-phase (the
 * fused LoRA linear's output product) and bias. Two schedules of one contract share their bindings, their
 * uniform layout (declared here once) and their operand loaders (wgsl/gemm/operands.wgsl and, for the
 * LoRA phase, wgsl/gemm/lora_phase.wgsl). They are dispatched by the GEMM planner (webgpu/gemm.ts), not
 * through `Backend.run`: the plan picks template, tile and k slices, so they carry only the template part
 * of a record; their CPU reference is the matmul and fused-LoRA references of the CPU backend.
 * @module
 */
import { DROPOUT_PARAMS } from "./dropout_mask.ts";
import type { BindingSpec, KernelTemplate, ParamLayout } from "./record.ts";

/**
 * The GEMM uniform block. k_z_start / k_len: slice z of a split-K GEMM covers k in
 * [z · k_z_start, z · k_z_start + k_len); z_base: first z of this dispatch (grids are limited to 65535
 * workgroups along z); tiles_n / tiles: column blocks and all blocks of one z; r / scale: the LoRA phase's
 * depth and scale; the dropout fields mask the operand flagged MASK_A / MASK_B or the LoRA term;
 * q_block / q_scale_off: a quantized B's elements per scale and first scale word (QUANT_B, kernels/quantize.ts).
 */
export const GEMM_PARAMS: ParamLayout = [
  { name: "m", type: "u32" },
  { name: "n", type: "u32" },
  { name: "k", type: "u32" },
  { name: "a_z_stride", type: "u32" },
  { name: "b_z_stride", type: "u32" },
  { name: "c_z_stride", type: "u32" },
  { name: "k_z_start", type: "u32" },
  { name: "k_len", type: "u32" },
  { name: "z_base", type: "u32" },
  ...DROPOUT_PARAMS,
  { name: "alpha", type: "f32" },
  { name: "tiles_n", type: "u32" },
  { name: "tiles", type: "u32" },
  { name: "r", type: "u32" },
  { name: "scale", type: "f32" },
  { name: "q_block", type: "u32" },
  { name: "q_scale_off", type: "u32" },
];

/**
 * The pair dispatch's uniform block (wgsl/gemm/pair.wgsl): {@link GEMM_PARAMS}, then the second product's
 * columns and blocks and which product's B the dropout masks (0 neither, 1 the first, 2 the second).
 */
export const GEMM_PAIR_PARAMS: ParamLayout = [
  ...GEMM_PARAMS,
  { name: "n2", type: "u32" },
  { name: "tiles_n2", type: "u32" },
  { name: "tiles2", type: "u32" },
  { name: "pair_mask", type: "u32" },
];

/** The stream-K fields: a plan's workgroups and k slabs per tile (wgsl/gemm/stream_k.wgsl). */
const STREAM_K_PARAMS: ParamLayout = [
  { name: "sk_groups", type: "u32" },
  { name: "sk_dp", type: "u32" },
  { name: "sk_slabs", type: "u32" },
];

/** The tiled template's uniform block: {@link GEMM_PARAMS}, then the stream-K fields (read with STREAM_K). */
export const GEMM_TILED_PARAMS: ParamLayout = [...GEMM_PARAMS, ...STREAM_K_PARAMS];

/** A, B, the LoRA phase's P and Q, bias, C; unused ones bind a dummy buffer. */
export const GEMM_BINDINGS: readonly BindingSpec[] = [
  { name: "a", access: "read" },
  { name: "b", access: "read" },
  { name: "lp", access: "read" },
  { name: "lq", access: "read" },
  { name: "bias", access: "read" },
  { name: "c", access: "write" },
];

const GEMM_INCLUDES = ["quant_codes", "gemm/operands", "gemm/lora_phase"];

/** Workgroup tiles staged in workgroup memory, for hardware GPUs (wgsl/gemm/tiled.wgsl). */
export const GEMM_TILED: KernelTemplate = {
  name: "gemm_tiled",
  template: "gemm/tiled",
  includes: GEMM_INCLUDES,
  bindings: GEMM_BINDINGS,
  params: GEMM_TILED_PARAMS,
};

/**
 * The tiled template as a stream-K plan runs it (`STREAM_K`, webgpu/gemm_plan.ts GemmPlan.streamK): the
 * same bindings plus `part`, the partial tiles of the runs that cover part of a tile's k.
 */
export const GEMM_TILED_STREAM_K: KernelTemplate = {
  name: "gemm_tiled_stream_k",
  template: "gemm/tiled",
  includes: [...GEMM_INCLUDES, "gemm/stream_k", "gemm/stream_k_part"],
  bindings: [...GEMM_BINDINGS, { name: "part", access: "write" }],
  params: GEMM_TILED_PARAMS,
};

/**
 * The fix-up pass after a stream-K GEMM (wgsl/gemm/stream_k_fixup.wgsl): sums each shared tile's partial
 * tiles, applies alpha and the bias, stores the tile into C. Specialised on T (C's type), BM, BN, WG, BIAS and VEC_C. Its
 * reference is the matmul's: it only finishes a GEMM.
 */
export const STREAM_K_FIXUP: KernelTemplate = {
  name: "gemm_stream_k_fixup",
  template: "gemm/stream_k_fixup",
  includes: ["gemm/stream_k"],
  bindings: [
    { name: "part", access: "read" },
    { name: "bias", access: "read" },
    { name: "c", access: "write" },
  ],
  params: [
    { name: "m", type: "u32" },
    { name: "n", type: "u32" },
    { name: "alpha", type: "f32" },
    { name: "tiles_n", type: "u32" },
    { name: "tiles", type: "u32" },
    ...STREAM_K_PARAMS,
  ],
};

/**
 * The direct template running two products in one dispatch (`PAIR`, webgpu/gemm.ts recordGemmPair;
 * wgsl/gemm/pair.wgsl): the second's A and B take the LoRA phase's slots (a pair has none) and its
 * output, stored transposed, the seventh binding.
 */
export const GEMM_DIRECT_PAIR: KernelTemplate = {
  name: "gemm_direct_pair",
  template: "gemm/direct",
  includes: ["quant_codes", "gemm/pair", "gemm/operands"],
  bindings: [
    { name: "a", access: "read" },
    { name: "b", access: "read" },
    { name: "a2", access: "read" },
    { name: "b2", access: "read" },
    { name: "bias", access: "read" },
    { name: "c", access: "write" },
    { name: "c2", access: "write" },
  ],
  params: GEMM_PAIR_PARAMS,
};

/** One block per invocation straight from storage, for software adapters (wgsl/gemm/direct.wgsl). */
export const GEMM_DIRECT: KernelTemplate = {
  name: "gemm_direct",
  template: "gemm/direct",
  includes: GEMM_INCLUDES,
  bindings: GEMM_BINDINGS,
  params: GEMM_PARAMS,
};
