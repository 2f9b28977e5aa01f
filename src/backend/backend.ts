/**
 * The backend interface: the only boundary between array logic (tensors, autograd, layers) and device
 * code. A backend owns opaque storage handles and runs primitive kernels on them. Every method is
 * synchronous except {@link Backend.read}: GPU backends record work and return handles at once.
 *
 * Conventions: arrays are row-major and contiguous; every operand of one call has the same dtype,
 * checked by the caller; `size`, `m`, `k`, ... are element counts, never byte counts.
 * @module
 */
import type { DType, HostArray } from "../core/dtype.ts";
import type { KernelRecord } from "./kernels/record.ts";
import type { QuantLayout } from "./kernels/quantize.ts";
import type { MatmulArgs } from "./shape.ts";

export type { MatmulArgs } from "./shape.ts";

/** An opaque handle to device memory holding one tensor's elements. */
export interface Storage {
  /** Number of elements. */
  readonly size: number;
  readonly dtype: DType;
}

/** Element-wise functions of one argument. */
export type UnaryOp =
  | "neg"
  | "exp"
  | "log"
  | "sqrt"
  | "rsqrt"
  | "sigmoid"
  | "silu"
  | "siluGrad" // d silu(x) / dx
  | "relu"
  | "step" // 1 where x > 0, else 0
  | "square"
  | "recip"
  | "abs"
  | "sin"
  | "cos";

/** Element-wise functions of two arguments (broadcast by {@link Backend.binary}). */
export type BinaryOp = "add" | "sub" | "mul" | "div" | "max" | "gt";

/** Dropout applied inside the fused LoRA kernels; the mask is `dropoutHash(seed, i) >= threshold`. */
export interface FusedDropout {
  p: number;
  seed: number;
  /** "pre": on x before lora_A; "post": on the scaled LoRA output. */
  position: "pre" | "post";
}

/** A packed quantized frozen weight's layout (src/backend/kernels/quantize.ts). */
export type WeightQuant = QuantLayout;

/**
 * Operands of t = drop_pre(x) · Aᵀ ([m, in] → [m, rank]), the token×rank product inside the fused LoRA
 * linear ({@link Backend.loraInner}).
 */
export interface LoraInnerArgs {
  /** The input [m, inFeatures]. */
  x: Storage;
  /** lora_A [rank, inFeatures] (its dtype may differ from x's: mixed precision). */
  a: Storage;
  /** Rows of x (tokens). */
  m: number;
  inFeatures: number;
  rank: number;
  /** The op's dropout; only a "pre" dropout (on x) enters t, a "post" one is ignored here. */
  dropout: FusedDropout | null;
}

/**
 * Operands of the fused LoRA forward y = x W^T + b + scale · drop(x A^T B^T) ([m, in] → [m, out]).
 * With `wQuant`, `w` is a packed quantized weight (f32 words) dequantized inside the GEMMs; rank 0 (empty
 * `a` and `b`) is the quantized Linear without an adapter.
 */
export interface LoraForwardArgs extends LoraInnerArgs {
  /** The frozen base weight [outFeatures, inFeatures], or its packed words with `wQuant`. */
  w: Storage;
  /** The base bias [outFeatures], or null. */
  bias: Storage | null;
  /** lora_B [outFeatures, rank], in lora_A's dtype. */
  b: Storage;
  outFeatures: number;
  /** The LoRA scale (alpha / rank, or what the adapter's config says). */
  scale: number;
  /** The layout of a quantized `w`; absent or null for a plain weight. */
  wQuant?: WeightQuant | null;
  /**
   * t = drop_pre(x) · Aᵀ of these operands as {@link Backend.loraInner} returned it, or absent / null to
   * compute it inside the call (into scratch freed before it returns). The caller keeps ownership: an op
   * that records a backward computes t once, passes it here and again to {@link LoraBackwardArgs.inner}.
   */
  inner?: Storage | null;
}

/** Operands of the fused LoRA backward: only x, A and B (and t, when kept) were saved by the forward. */
export interface LoraBackwardArgs extends Omit<LoraForwardArgs, "bias"> {
  /** The output's gradient [m, outFeatures], in x's dtype. */
  dy: Storage;
  /** Skip dx when the input needs no gradient. */
  needDx: boolean;
  /**
   * The forward's t = drop_pre(x) · Aᵀ ({@link Backend.loraInner}, the same operands and dropout), which
   * dB = scale · drop_post(dy)ᵀ · t reads; absent or null: t is recomputed from x and A (one more GEMM over
   * x). The caller keeps ownership.
   */
  inner?: Storage | null;
}

/** Gradients of the fused LoRA backward (`dx` null when not asked for). */
export interface LoraGrads {
  dx: Storage | null;
  dA: Storage;
  dB: Storage;
}

/** Encodings of the bytes a {@link Backend.beginUpload} receives (little-endian floats). */
export type UploadFormat = "f32" | "f16" | "bf16";

/** An upload under way ({@link Backend.beginUpload}). */
export interface ByteUpload {
  /**
   * Copies `bytes` to byte `byteOffset` of the encoded tensor (a multiple of 4; the length too, except
   * for the piece that ends the tensor). The bytes are copied before this returns.
   */
  write(bytes: Uint8Array, byteOffset: number): void;
  /** The storage, once every byte was written (converted on the device where the format asks). */
  finish(): Storage;
  /** Frees what the upload holds (after an error); idempotent. */
  abort(): void;
}

/** A device's memory: live tensors' storage (like torch's `memory_allocated`), its peak, the pool. */
export interface MemoryStats {
  /** Live storages. */
  buffers: number;
  /** Bytes of live storages (elements × dtype size). */
  bytes: number;
  /** High-water mark of `bytes` since the device was made or {@link Backend.resetPeakMemory}. */
  peakBytes: number;
  /** Bytes of freed device buffers kept for reuse (0 on the CPU, whose arrays go to the JS heap). */
  pooledBytes: number;
}

/** One row of a profile: a kernel (WebGPU) or op (CPU), how often it ran and its total milliseconds. */
export interface ProfileRow {
  name: string;
  calls: number;
  ms: number;
}

/** A compute device's kernels. */
export interface Backend {
  /** "cpu" or "webgpu". */
  readonly kind: "cpu" | "webgpu";
  /** Human-readable description (adapter name for WebGPU). */
  readonly description: string;
  /** Whether tensors of this dtype can live here. */
  supportsDType(dtype: DType): boolean;

  /** Copies host values in (rounding to the dtype). */
  upload(data: ArrayLike<number>, dtype: DType): Storage;
  /**
   * Overwrites every element of `dst` with host values (rounding to its dtype) in place: the same storage,
   * nothing allocated (PEFT's hot swap writes new adapter weights this way). Work queued before the call
   * reads the old values, work queued after it the new ones.
   * @throws {ShapeError} when `data` does not have `dst.size` values
   */
  write(dst: Storage, data: ArrayLike<number>): void;
  /**
   * Optional: starts an upload of `size` elements of `dtype` whose little-endian bytes, encoded as
   * `format`, arrive in pieces ({@link ByteUpload}); checkpoint loaders stream files through it instead
   * of building whole arrays on the host. Null where this backend does not convert `format` to `dtype`
   * itself (the caller converts on the host then). Throws as {@link upload} for sizes and dtypes. A tensor
   * larger than one device buffer is split into blocks of whole rows of `rowLength` (default: all of it).
   */
  beginUpload?(size: number, dtype: DType, format: UploadFormat, rowLength?: number): ByteUpload | null;
  /** Copies values out; f64 storage reads as Float64Array, everything else as Float32Array. */
  read(s: Storage): Promise<HostArray>;
  /** Synchronous read where the device allows it (the CPU); others throw DeviceError. */
  readSync(s: Storage): HostArray;
  /** Frees the memory behind `s`; idempotent. */
  free(s: Storage): void;
  /** Live storage count and bytes, for leak checks. */
  memory(): { buffers: number; bytes: number };
  /** {@link memory} plus the peak and the pool. */
  memoryStats(): MemoryStats;
  /** Restarts the peak at the bytes live now. */
  resetPeakMemory(): void;
  /**
   * Live bytes no allocation may pass (null: none beyond the device's own). Work that would pass it is a
   * DeviceError naming the op and the bytes, thrown before anything is allocated or queued.
   */
  memoryLimit: number | null;
  /**
   * Starts a profile: from now on each kernel (WebGPU) or op (CPU) is timed. `timestamps` tells whether
   * the times are GPU timestamps (else host time). With `detail`, rows are per kernel and shape.
   */
  beginProfile(detail?: boolean): { timestamps: boolean };
  /** Ends the profile started by {@link beginProfile} (after all its work finished) and returns its rows. */
  endProfile(): Promise<ProfileRow[]>;

  /** A new storage of `size` elements all equal to `value`. */
  fill(size: number, value: number, dtype: DType): Storage;
  /** Converts element type. */
  cast(x: Storage, dtype: DType): Storage;
  /** out[i] = f(x[i]). */
  unary(op: UnaryOp, x: Storage): Storage;
  /** out[i] = x[i] * mul + add. */
  affine(x: Storage, mul: number, add: number): Storage;
  /** Broadcasting element-wise op; shapes are right-aligned, `outShape` is their broadcast. */
  binary(
    op: BinaryOp,
    a: Storage,
    aShape: readonly number[],
    b: Storage,
    bShape: readonly number[],
    outShape: readonly number[],
  ): Storage;
  /** Sum over the middle axis of an [outer, n, inner] view → [outer, inner]. */
  sumAxis(x: Storage, outer: number, n: number, inner: number): Storage;
  /** Max over the middle axis of an [outer, n, inner] view → [outer, inner]. */
  maxAxis(x: Storage, outer: number, n: number, inner: number): Storage;
  /** Softmax (or log-softmax) over the last axis of [rows, n]. */
  softmax(x: Storage, rows: number, n: number, log: boolean): Storage;
  /**
   * Batched matrix product out[b] = op(A[b]) · op(B[b]), op = transpose when the flag is set.
   * A[b] is [m, k] ([k, m] stored when transA); B[b] is [k, n] ([n, k] stored when transB).
   * `aBatch`/`bBatch` are 1 (broadcast) or `batch`. With `bias` ([n], A's dtype) every row of every
   * product gets bias added before the result is rounded to its dtype (on WebGPU inside the GEMM's store).
   */
  matmul(a: Storage, b: Storage, args: MatmulArgs, bias?: Storage | null): Storage;
  /** Contiguous copy of `x` (of `shape`) with axes permuted: out axis i is input axis perm[i]. */
  permute(x: Storage, shape: readonly number[], perm: readonly number[]): Storage;
  /** Copies rows of a [rows, dim] table: out[i] = table[ids[i]]. */
  gatherRows(table: Storage, ids: Int32Array, dim: number): Storage;
  /** Adds rows of src [ids.length, dim] into a zero [rows, dim] table at ids (negative ids skipped). */
  scatterAddRows(src: Storage, ids: Int32Array, rows: number, dim: number): Storage;
  /** Picks one element per row of [rows, n]: out[i] = x[i, idx[i]] (0 where idx[i] < 0). */
  pick(x: Storage, idx: Int32Array, n: number): Storage;
  /** Inverse of {@link pick}: [rows, n] zeros with out[i, idx[i]] = src[i]. */
  unpick(src: Storage, idx: Int32Array, n: number): Storage;
  /**
   * One new storage of `total` elements of `dtype` holding `parts[i]` at element `offsets[i]` (the
   * multi-tensor optimizer's packing; elements no part covers, and those of null parts, are unspecified).
   * Offsets of 2-byte dtypes must be even: devices copy whole 4-byte words. A result larger than one
   * device buffer is split into blocks of whole rows of `rowLength` (default 1).
   */
  pack(
    parts: readonly (Storage | null)[],
    offsets: readonly number[],
    total: number,
    dtype: DType,
    rowLength?: number,
  ): Storage;
  /**
   * Optional: rows of `rowLength` elements of `dtype` one device buffer holds, where a device splits
   * larger tensors into row blocks (WebGPU: larger than one storage binding). Absent: no limit.
   */
  maxRowsPerBuffer?(rowLength: number, dtype: DType): number;
  /** New storages of `sizes[i]` elements copied out of `packed` from element `offsets[i]` (inverse of pack). */
  unpack(packed: Storage, offsets: readonly number[], sizes: readonly number[]): Storage[];
  /** Dropout multiplier mask: 0 or 1 / (1 - p) per element, from `dropoutHash(seed, i)`. */
  dropoutMask(size: number, p: number, seed: number, dtype: DType): Storage;
  /**
   * t = drop_pre(x) · Aᵀ, [m, rank], in the backend's accumulation type (f32 on WebGPU, f64 on the CPU
   * reference), as the fused forward computes it: the one intermediate of the LoRA linear worth keeping
   * for the backward (4·m·rank bytes on WebGPU), passed as `inner` to {@link loraForward} and
   * {@link loraBackward}, which then skip their own product over x. The caller frees it.
   */
  loraInner(args: LoraInnerArgs): Storage;
  /** Fused LoRA linear forward (with `inner`: t given, not computed). */
  loraForward(args: LoraForwardArgs): Storage;
  /** Fused LoRA linear backward (with `inner`: t given, not recomputed). */
  loraBackward(args: LoraBackwardArgs): LoraGrads;
  /**
   * Runs one kernel record (src/backend/kernels/): the CPU calls its reference, WebGPU dispatches its
   * template. `inputs` are the storage bindings before the record's scratch words and outputs; returns
   * the outputs in binding order. New kernels are called this way, with no method of their own.
   */
  run<A>(record: KernelRecord<A>, inputs: readonly Storage[], args: A): Storage[];
  /** Waits for queued work (no-op on the CPU). */
  sync(): Promise<void>;
  /** Releases the device; later use is a DeviceError. */
  destroy(): void;
}
