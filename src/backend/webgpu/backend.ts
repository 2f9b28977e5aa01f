/**
 * The WebGPU backend: every {@link Backend} primitive as WGSL kernels from `wgsl/`, f32 and (with
 * `shader-f16`) f16 storage, arithmetic in f32. Work is recorded without host round trips; only
 * {@link WebGpuBackend.read} and {@link WebGpuBackend.sync} wait for the GPU.
 * @module
 */
import type {
  Backend,
  BinaryOp,
  ByteUpload,
  LoraBackwardArgs,
  LoraForwardArgs,
  LoraGrads,
  LoraInnerArgs,
  MatmulArgs,
  MemoryStats,
  ProfileRow,
  Storage,
  UnaryOp,
  UploadFormat,
} from "../backend.ts";
import { type DType, dtypeSize, type HostArray } from "../../core/dtype.ts";
import { f16BitsToNumber, numberToF16Bits } from "../../core/half.ts";
import { ConfigError, DeviceError, DTypeError, ShapeError } from "../../core/errors.ts";
import { PipelineCache, WORKGROUP_SIZE } from "./pipelines.ts";
import { type Binding, type GpuBuffer, GpuRuntime } from "./runtime.ts";
import { bufferBytes, type GemmContext, recordGemm, type WgslType } from "./gemm.ts";
import { expectSize, type KernelRecord, packParams } from "../kernels/record.ts";
import { AFFINE } from "../kernels/affine.ts";
import { BINARY } from "../kernels/binary.ts";
import { CAST } from "../kernels/cast.ts";
import { DROPOUT_MASK } from "../kernels/dropout_mask.ts";
import { FILL } from "../kernels/fill.ts";
import { GATHER_ROWS } from "../kernels/gather_rows.ts";
import { PERMUTE } from "../kernels/permute.ts";
import { PICK, UNPICK } from "../kernels/pick.ts";
import { REDUCE_COLS, REDUCE_ROWS } from "../kernels/reduce_axis.ts";
import { SCATTER_ADD_ROWS } from "../kernels/scatter_add_rows.ts";
import { SOFTMAX } from "../kernels/softmax.ts";
import { UNARY } from "../kernels/unary.ts";
import { WIDEN_HALF } from "../kernels/widen_half.ts";
import { DIRECT_PROFILE, type GemmProfile } from "./gemm_plan.ts";
import { tunedProfile } from "./gemm_tuned.ts";
import { recordLoraBackward, recordLoraForward, recordLoraInner } from "./lora.ts";
import { blockLayout, bufferLimit, copyElements, type GpuBlock, type Piece, rowsPerBlock } from "./blocks.ts";
import { checkPack, checkSegments } from "../packing.ts";
import { matmulArgs } from "../shape.ts";
import { checkLoraDTypes } from "../lora_dtypes.ts";

/** WebGPU storage: a pooled device buffer plus element count and dtype. */
export class GpuStorage implements Storage {
  /** The device buffer; null once freed, and for a tensor split into {@link blocks}. */
  buf: GpuBuffer | null;
  /**
   * The row blocks of a tensor larger than one binding (src/backend/webgpu/blocks.ts), null otherwise;
   * emptied once freed.
   */
  blocks: GpuBlock[] | null = null;
  constructor(buf: GpuBuffer, readonly size: number, readonly dtype: DType, readonly owner: WebGpuBackend) {
    this.buf = buf;
  }
}

/** Bytes a tensor of `size` elements of `dtype` occupies on the GPU (padded to 4, at least 4). */
function storageBytes(size: number, dtype: DType): number {
  return bufferBytes(size, dtype as WgslType);
}

/** The WebGPU implementation of {@link Backend}. */
export class WebGpuBackend implements Backend {
  readonly kind = "webgpu" as const;
  readonly description: string;
  /** The GPU plumbing (exposed for tests and tools). */
  readonly rt: GpuRuntime;
  readonly #kernels: PipelineCache;
  readonly #ctx: GemmContext;
  readonly #hasF16: boolean;
  #liveBuffers = 0;
  #liveBytes = 0;
  #peakBytes = 0;
  #limit: number | null = null;
  /** Reused by {@link run}: the bindings of one dispatch (inputs, scratch, outputs). */
  readonly #bindList: Binding[] = [];

  /**
   * @param device a GPUDevice (requested with the adapter's limits and, when offered, `shader-f16`)
   * @param description the adapter's name
   * @param software whether the adapter is a software rasteriser: it then gets the GEMM profile made for
   *   CPUs (gemm_plan.ts); a hardware adapter named in gemm_tuned.ts gets its tuned plans
   */
  constructor(device: GPUDevice, description: string, software = false) {
    this.description = description;
    this.rt = new GpuRuntime(device);
    this.#kernels = new PipelineCache(device, (msg) => this.rt.reportError(msg));
    // A hardware adapter with a tuned table (gemm_tuned.ts) takes its plans for the shapes it lists.
    const profile = software ? DIRECT_PROFILE : tunedProfile(description);
    this.#ctx = { rt: this.rt, kernels: this.#kernels, profile };
    this.#hasF16 = device.features.has("shader-f16");
  }

  /** The underlying GPUDevice. */
  get gpuDevice(): GPUDevice {
    return this.rt.device;
  }

  /**
   * The GEMM schedule and tiles: chosen from the adapter class when the backend is made. Every profile
   * computes the same products up to rounding; tests switch it to check each one on a single adapter.
   */
  get gemmProfile(): GemmProfile {
    return this.#ctx.profile;
  }

  set gemmProfile(profile: GemmProfile) {
    if (profile.tiles.length === 0) throw new ConfigError("gemmProfile: a profile needs at least one tile");
    this.#ctx.profile = profile;
  }

  /** Number of compiled pipelines (for tests of the cache). */
  get pipelineCount(): number {
    return this.#kernels.size;
  }

  /** Keys (record name | specialisation) of the compiled pipelines (for tests of the cache). */
  pipelineKeys(): string[] {
    return this.#kernels.keys();
  }

  supportsDType(dtype: DType): boolean {
    return dtype === "f32" || (dtype === "f16" && this.#hasF16);
  }

  // -------------------------------------------------------------------------------------------------
  // Storage

  #checkDType(dtype: DType, op: string): WgslType {
    if (!this.supportsDType(dtype)) {
      const why = dtype === "f64" ? "f64 exists on the CPU device only" : "this adapter lacks 'shader-f16'";
      throw new DTypeError(`${op}: dtype ${dtype} is not available on WebGPU (${this.description}): ${why}`);
    }
    return dtype as WgslType;
  }

  /** The binding of an input storage, checked to be alive and ours. */
  #in(s: Storage, op: string): Binding {
    if (!(s instanceof GpuStorage) || s.owner !== this) {
      throw new DeviceError(`${op}: storage belongs to another device, not WebGPU (${this.description})`);
    }
    if (s.blocks !== null) {
      throw new DeviceError(
        `${op}: a tensor of ${s.size} elements (${s.dtype}) is split across ${s.blocks.length} buffers, ` +
          `being larger than one binding of this adapter (${bufferLimit(this.rt)} bytes); ${op} takes only ` +
          `tensors in one buffer (split ones go to gatherRows, unpack, pack, scatterAddRows, add and read)`,
      );
    }
    if (s.buf === null) throw new DeviceError(`${op}: storage of ${s.size} elements was freed`);
    return s.buf; // bound whole: no kernel reads arrayLength
  }

  /** The buffers holding a storage's elements: its blocks, or its one buffer. */
  #pieces(s: Storage, op: string): Piece[] {
    if (s instanceof GpuStorage && s.owner === this && s.blocks !== null) {
      if (s.blocks.length === 0) throw new DeviceError(`${op}: storage of ${s.size} elements was freed`);
      return s.blocks;
    }
    return [{ buf: this.#in(s, op).buf, start: 0, size: s.size }];
  }

  /**
   * A new live storage of `size` elements in rows of `rowLength`: one buffer where it fits one binding,
   * else row blocks (each counted against the memory limit as one storage).
   */
  #newBlocked(size: number, dtype: DType, rowLength: number, what: string, forUpload = false): GpuStorage {
    const layout = blockLayout(size, rowLength, dtypeSize(dtype), bufferLimit(this.rt), what);
    if (layout === null) return this.#new(size, dtype, what, forUpload);
    this.#reserve(size * dtypeSize(dtype), what);
    const blocks: GpuBlock[] = [];
    try {
      for (const b of layout) {
        blocks.push({ ...b, buf: this.rt.alloc(storageBytes(b.size, dtype), what, forUpload) });
      }
    } catch (e) {
      for (const b of blocks) this.rt.release(b.buf);
      throw e;
    }
    const s = new GpuStorage(blocks[0].buf, size, dtype, this);
    s.buf = null;
    s.blocks = blocks;
    this.#count(size * dtypeSize(dtype));
    return s;
  }

  /** One split storage made of `parts` (live storages of one buffer each, in element order), taking them over. */
  #joinBlocks(parts: GpuStorage[], dtype: DType): GpuStorage {
    if (parts.length === 1) return parts[0];
    const blocks: GpuBlock[] = [];
    let start = 0;
    for (const p of parts) {
      blocks.push({ buf: p.buf!, start, size: p.size });
      start += p.size;
      p.buf = null;
    }
    const s = new GpuStorage(blocks[0].buf, start, dtype, this);
    s.buf = null;
    s.blocks = blocks;
    this.#liveBuffers -= parts.length - 1;
    return s;
  }

  /** Rows of `rowLength` elements of `dtype` that one buffer of this adapter holds. */
  maxRowsPerBuffer(rowLength: number, dtype: DType): number {
    return rowsPerBlock(rowLength, dtypeSize(dtype), bufferLimit(this.rt));
  }

  /** A new live storage (checked against the memory limit first). */
  #new(size: number, dtype: DType, what: string, forUpload = false): GpuStorage {
    const bytes = storageBytes(size, dtype);
    this.#reserve(size * dtypeSize(dtype), what);
    const s = new GpuStorage(this.rt.alloc(bytes, what, forUpload), size, dtype, this);
    this.#count(size * dtypeSize(dtype));
    return s;
  }

  #count(bytes: number): void {
    this.#liveBuffers++;
    this.#liveBytes += bytes;
    if (this.#liveBytes > this.#peakBytes) this.#peakBytes = this.#liveBytes;
  }

  /**
   * Throws a DeviceError naming `what` when `bytes` more would pass the memory limit; first gives pooled
   * buffers back so that live, pooled and new bytes together stay under it.
   */
  #reserve(bytes: number, what: string): void {
    const limit = this.#limit;
    if (limit === null) return;
    if (this.#liveBytes + bytes > limit) {
      throw new DeviceError(
        `${what} needs ${bytes} bytes with ${this.#liveBytes} bytes live, past this device's memory limit ` +
          `of ${limit} bytes (setMemoryLimit)`,
      );
    }
    const room = limit - this.rt.inUseBytes - bytes;
    if (this.rt.pooledBytes > room) this.rt.trimPool(Math.max(0, room));
  }

  /** Bytes `specs` will hold, for the limit check. */
  #outputBytes(specs: readonly { size: number; dtype: DType }[]): number {
    let total = 0;
    for (const s of specs) total += s.size * dtypeSize(s.dtype);
    return total;
  }

  #bind(s: GpuStorage): Binding {
    return { buf: s.buf!, bytes: storageBytes(s.size, s.dtype) };
  }

  /** Uploads 32-bit words to a scratch buffer (ids, index lists). */
  #words(words: Uint32Array | Int32Array, what: string): Binding {
    const bytes = Math.max(4, words.byteLength);
    const b = { buf: this.rt.alloc(bytes, what, true), bytes };
    this.rt.write(b.buf, words);
    return b;
  }

  #sameSize(s: Storage, size: number, op: string, what: string): void {
    expectSize(s.size, size, op, what);
  }

  upload(data: ArrayLike<number>, dtype: DType): Storage {
    this.rt.checkAlive("upload");
    const t = this.#checkDType(dtype, "upload");
    const s = this.#new(data.length, dtype, `upload: tensor of ${data.length} elements (${dtype})`, true);
    if (data.length === 0) return s;
    if (t === "f32") {
      this.rt.write(s.buf!, data instanceof Float32Array ? data : Float32Array.from(data));
    } else {
      const bits = new Uint16Array(data.length + (data.length % 2));
      for (let i = 0; i < data.length; i++) bits[i] = numberToF16Bits(data[i]);
      this.rt.write(s.buf!, bits);
    }
    return s;
  }

  /**
   * A streamed upload: bytes already in `dtype`'s encoding go straight into the tensor's buffer, one
   * `queue.writeBuffer` per piece; BF16/F16 bytes for an f32 tensor go into a buffer of raw words that
   * {@link WIDEN_HALF} widens when the upload finishes. Null for other conversions (the host does them).
   */
  beginUpload(size: number, dtype: DType, format: UploadFormat, rowLength = size): ByteUpload | null {
    this.rt.checkAlive("upload");
    this.#checkDType(dtype, "upload");
    const direct = format === dtype;
    if (!direct && !(dtype === "f32" && (format === "f16" || format === "bf16"))) return null;
    const what = `upload: tensor of ${size} elements (${dtype})`;
    const layout = blockLayout(size, rowLength, dtypeSize(dtype), bufferLimit(this.rt), what);
    if (layout !== null) return this.#beginBlockedUpload(layout, size, dtype, format);
    const target = direct
      ? this.#new(size, dtype, what, true)
      : this.#new(Math.ceil(size / 2), "f32", `${what}: its ${format} words`, true);
    const encodedBytes = size * (format === "f32" ? 4 : 2);
    const tail = new Uint8Array(4);
    let open = true;
    return {
      write: (bytes, byteOffset) => {
        if (!open) throw new DeviceError(`upload: a write after the upload of ${size} elements ended`);
        const end = byteOffset + bytes.length;
        const whole = bytes.length - (bytes.length % 4);
        if (
          byteOffset % 4 !== 0 || byteOffset < 0 || end > encodedBytes ||
          (whole < bytes.length && end !== encodedBytes)
        ) {
          throw new ShapeError(
            `upload: bytes [${byteOffset}, ${end}] do not fit the ${encodedBytes} bytes of ${size} ${format} ` +
              `elements in whole words (only the last piece may end inside one)`,
          );
        }
        if (whole > 0) this.rt.write(target.buf!, bytes.subarray(0, whole), byteOffset);
        if (whole < bytes.length) {
          tail.fill(0);
          tail.set(bytes.subarray(whole));
          this.rt.write(target.buf!, tail, byteOffset + whole);
        }
      },
      finish: () => {
        if (!open) throw new DeviceError(`upload: the upload of ${size} elements already ended`);
        open = false;
        if (direct) return target;
        try {
          return this.run(WIDEN_HALF, [target], { format: format as "f16" | "bf16", n: size })[0];
        } finally {
          this.free(target);
        }
      },
      abort: () => {
        if (open) this.free(target);
        open = false;
      },
    };
  }

  write(dst: Storage, data: ArrayLike<number>): void {
    this.rt.checkAlive("write");
    const b = this.#in(dst, "write");
    if (data.length !== dst.size) {
      throw new ShapeError(`write: ${data.length} values for a storage of ${dst.size} elements`);
    }
    if (data.length === 0) return;
    // The runtime submits queued work that uses the buffer first (queue writes run before unsubmitted work).
    if (dst.dtype === "f32") {
      this.rt.write(b.buf, data instanceof Float32Array ? data : Float32Array.from(data));
    } else {
      const bits = new Uint16Array(data.length + (data.length % 2));
      for (let i = 0; i < data.length; i++) bits[i] = numberToF16Bits(data[i]);
      this.rt.write(b.buf, bits);
    }
  }

  /** {@link beginUpload} of a tensor split into row blocks: one upload per block, the pieces routed. */
  #beginBlockedUpload(
    layout: { start: number; size: number }[],
    size: number,
    dtype: DType,
    format: UploadFormat,
  ): ByteUpload {
    const fes = format === "f32" ? 4 : 2;
    const parts: ByteUpload[] = [];
    try {
      for (const b of layout) parts.push(this.beginUpload(b.size, dtype, format)!);
    } catch (e) {
      for (const p of parts) p.abort();
      throw e;
    }
    const encodedBytes = size * fes;
    return {
      write: (bytes, byteOffset) => {
        const end = byteOffset + bytes.length;
        if (byteOffset % 4 !== 0 || byteOffset < 0 || end > encodedBytes) {
          throw new ShapeError(
            `upload: bytes [${byteOffset}, ${end}] do not fit the ${encodedBytes} bytes of ${size} ${format} ` +
              `elements in whole words`,
          );
        }
        layout.forEach((b, i) => {
          const lo = Math.max(byteOffset, b.start * fes), hi = Math.min(end, (b.start + b.size) * fes);
          if (lo < hi) parts[i].write(bytes.subarray(lo - byteOffset, hi - byteOffset), lo - b.start * fes);
        });
      },
      finish: () => {
        const done: GpuStorage[] = [];
        try {
          for (const p of parts) done.push(p.finish() as GpuStorage);
        } catch (e) {
          for (const d of done) this.free(d);
          for (const p of parts.slice(done.length)) p.abort();
          throw e;
        }
        return this.#joinBlocks(done, dtype);
      },
      abort: () => {
        for (const p of parts) p.abort();
      },
    };
  }

  async read(s: Storage): Promise<HostArray> {
    if (s instanceof GpuStorage && s.blocks !== null && s.owner === this) {
      // A split tensor reads block by block into one array.
      const out = new Float32Array(s.size);
      for (const b of this.#pieces(s, "read")) {
        const part = await this.read(new GpuStorage(b.buf, b.size, s.dtype, this));
        out.set(part as Float32Array, b.start);
      }
      return out;
    }
    const b = this.#in(s, "read");
    if (s.size === 0) return new Float32Array(0);
    const bytes = s.size * dtypeSize(s.dtype);
    const raw = await this.rt.read(b.buf, bytes, "read");
    if (s.dtype === "f32") return new Float32Array(raw);
    const bits = new Uint16Array(raw);
    const out = new Float32Array(s.size);
    for (let i = 0; i < out.length; i++) out[i] = f16BitsToNumber(bits[i]);
    return out;
  }

  readSync(s: Storage): HostArray {
    throw new DeviceError(
      `readSync: a WebGPU tensor of ${s.size} elements cannot be read synchronously; use await t.data()`,
    );
  }

  free(s: Storage): void {
    if (s instanceof GpuStorage && s.owner === this && s.blocks !== null) {
      if (s.blocks.length === 0) return;
      for (const b of s.blocks) this.rt.release(b.buf);
      s.blocks = [];
      this.#liveBuffers--;
      this.#liveBytes -= s.size * dtypeSize(s.dtype);
      return;
    }
    if (!(s instanceof GpuStorage) || s.owner !== this || s.buf === null) return;
    this.rt.release(s.buf);
    s.buf = null;
    this.#liveBuffers--;
    this.#liveBytes -= s.size * dtypeSize(s.dtype);
  }

  memory(): { buffers: number; bytes: number } {
    return { buffers: this.#liveBuffers, bytes: this.#liveBytes };
  }

  memoryStats(): MemoryStats {
    return {
      buffers: this.#liveBuffers,
      bytes: this.#liveBytes,
      peakBytes: this.#peakBytes,
      pooledBytes: this.rt.pooledBytes,
    };
  }

  resetPeakMemory(): void {
    this.#peakBytes = this.#liveBytes;
  }

  get memoryLimit(): number | null {
    return this.#limit;
  }

  set memoryLimit(bytes: number | null) {
    this.#limit = bytes;
    if (bytes !== null) this.rt.trimPool(Math.max(0, bytes - this.rt.inUseBytes));
  }

  beginProfile(detail = false): { timestamps: boolean } {
    this.rt.checkAlive("profile");
    this.rt.beginProfile(detail);
    return { timestamps: this.rt.timestamps };
  }

  endProfile(): Promise<ProfileRow[]> {
    return this.rt.endProfile();
  }

  // -------------------------------------------------------------------------------------------------
  // Kernel records

  #begin(op: string, ...inputs: Storage[]): Binding[] {
    this.rt.checkAlive(op);
    return inputs.map((s) => this.#in(s, op));
  }

  /** {@link #begin} for a record's inputs, into the reused binding list. */
  #beginInto(op: string, inputs: readonly Storage[], list: Binding[]): void {
    this.rt.checkAlive(op);
    list.length = 0;
    for (const s of inputs) list.push(this.#in(s, op));
  }

  run<A>(record: KernelRecord<A>, inputs: readonly Storage[], args: A): Storage[] {
    const list = this.#bindList;
    this.#beginInto(record.name, inputs, list);
    record.check?.(inputs, args);
    const specs = record.outputs(inputs, args);
    // The op's own name heads every output's description ("dropoutMask: output ...").
    for (const s of specs) this.#checkDType(s.dtype, s.what.split(":")[0]);
    // Everything that can throw runs before the first allocation: nothing half-made is left behind.
    const words = packParams(record.params, record.uniforms(args, specs), record.name);
    const geometry = record.geometry(args, specs);
    if (specs.length > 1) this.#reserve(this.#outputBytes(specs), `${record.name}: ${specs.length} outputs`);
    const outs = specs.map((s) => this.#new(s.size, s.dtype, s.what));
    const count = "elements" in geometry ? geometry.elements : geometry.rows;
    if (count === 0 || specs.every((s) => s.size === 0)) return outs;
    const hostWords = record.scratch?.(args);
    const firstScratch = list.length;
    if (hostWords !== undefined) {
      for (const w of hostWords) list.push(this.#words(w, `${record.name}: scratch`));
    }
    const endScratch = list.length;
    for (const o of outs) list.push(o.buf!);
    const kernel = this.#kernels.get(record, { WG: WORKGROUP_SIZE, ...record.specialise(inputs, args) });
    const grid = "elements" in geometry ? this.rt.grid1d(count, WORKGROUP_SIZE) : this.rt.fold(count);
    this.rt.dispatch(kernel, words, list, grid);
    for (let i = firstScratch; i < endScratch; i++) this.rt.release(list[i].buf);
    list.length = 0;
    return outs;
  }

  // The Backend primitives of one dispatch, each a thin wrapper over its record.

  fill(size: number, value: number, dtype: DType): Storage {
    return this.run(FILL, [], { size, value, dtype })[0];
  }

  cast(x: Storage, dtype: DType): Storage {
    return this.run(CAST, [x], { dtype })[0];
  }

  unary(op: UnaryOp, x: Storage): Storage {
    return this.run(UNARY, [x], { op })[0];
  }

  affine(x: Storage, mul: number, add: number): Storage {
    return this.run(AFFINE, [x], { mul, add })[0];
  }

  binary(
    op: BinaryOp,
    a: Storage,
    aShape: readonly number[],
    b: Storage,
    bShape: readonly number[],
    outShape: readonly number[],
  ): Storage {
    if (a instanceof GpuStorage && b instanceof GpuStorage && (a.blocks !== null || b.blocks !== null)) {
      return this.#blockedBinary(op, a, b);
    }
    return this.run(BINARY, [a, b], { op, aShape, bShape, outShape })[0];
  }

  /** An element-wise op of two split tensors of the same blocks (gradients of a split table), block by block. */
  #blockedBinary(op: BinaryOp, a: GpuStorage, b: GpuStorage): Storage {
    const pa = this.#pieces(a, op), pb = this.#pieces(b, op);
    if (a.size !== b.size || pa.length !== pb.length || pa.some((p, i) => p.size !== pb[i].size)) {
      this.#in(a.blocks !== null ? a : b, op); // the split-tensor DeviceError
    }
    const parts = pa.map((p, i) => {
      const shape = [p.size];
      const x = new GpuStorage(p.buf, p.size, a.dtype, this),
        y = new GpuStorage(pb[i].buf, p.size, b.dtype, this);
      return this.run(BINARY, [x, y], { op, aShape: shape, bShape: shape, outShape: shape })[0] as GpuStorage;
    });
    return this.#joinBlocks(parts, a.dtype);
  }

  pack(
    parts: readonly (Storage | null)[],
    offsets: readonly number[],
    total: number,
    dtype: DType,
    rowLength?: number,
  ): Storage {
    this.rt.checkAlive("pack");
    const what = `pack: ${parts.length} tensors into ${total} elements (${dtype})`;
    const split = parts.some((p) => p instanceof GpuStorage && p.blocks !== null);
    if (split || blockLayout(total, rowLength ?? 1, dtypeSize(dtype), bufferLimit(this.rt), what) !== null) {
      const pieces = parts.map((p) => p === null ? null : this.#pieces(p, "pack"));
      const sizes = checkPack(parts, offsets, total, dtype);
      this.#checkDType(dtype, "pack");
      const out = this.#newBlocked(total, dtype, rowLength ?? 1, what);
      const dst = this.#pieces(out, "pack");
      pieces.forEach((src, i) => {
        if (src !== null && sizes[i] > 0) {
          copyElements(this.rt, src, 0, dst, offsets[i], sizes[i], dtypeSize(dtype), "pack");
        }
      });
      return out;
    }
    const binds = parts.map((s) => s === null ? null : this.#in(s, "pack"));
    const sizes = checkPack(parts, offsets, total, dtype);
    this.#checkDType(dtype, "pack");
    const out = this.#new(total, dtype, `pack: ${parts.length} tensors into ${total} elements (${dtype})`);
    const es = dtypeSize(dtype);
    // Offsets are word-aligned (checkSegments), and every buffer is padded to whole words.
    binds.forEach((b, i) => {
      if (b !== null && sizes[i] > 0) {
        this.rt.copy(b.buf, 0, out.buf!, offsets[i] * es, storageBytes(sizes[i], dtype));
      }
    });
    return out;
  }

  unpack(packed: Storage, offsets: readonly number[], sizes: readonly number[]): Storage[] {
    if (packed instanceof GpuStorage && packed.blocks !== null) {
      // Ranges of a split tensor (the fused loss's vocabulary chunks of a split head), across blocks.
      this.rt.checkAlive("unpack");
      const src = this.#pieces(packed, "unpack");
      checkSegments("unpack", offsets, sizes, packed.size, packed.dtype);
      return offsets.map((o, i) => {
        const s = this.#new(
          sizes[i],
          packed.dtype,
          `unpack: tensor of ${sizes[i]} elements (${packed.dtype})`,
        );
        if (sizes[i] > 0) {
          const dst = [{ buf: s.buf!, start: 0, size: sizes[i] }];
          copyElements(this.rt, src, o, dst, 0, sizes[i], dtypeSize(packed.dtype), "unpack");
        }
        return s;
      });
    }
    const [src] = this.#begin("unpack", packed);
    checkSegments("unpack", offsets, sizes, packed.size, packed.dtype);
    const es = dtypeSize(packed.dtype);
    return offsets.map((o, i) => {
      const s = this.#new(sizes[i], packed.dtype, `unpack: tensor of ${sizes[i]} elements (${packed.dtype})`);
      if (sizes[i] > 0) this.rt.copy(src.buf, o * es, s.buf!, 0, storageBytes(sizes[i], packed.dtype));
      return s;
    });
  }

  dropoutMask(size: number, p: number, seed: number, dtype: DType): Storage {
    return this.run(DROPOUT_MASK, [], { size, p, seed, dtype })[0];
  }

  sumAxis(x: Storage, outer: number, n: number, inner: number): Storage {
    return this.run(inner === 1 ? REDUCE_ROWS : REDUCE_COLS, [x], { op: "sum", outer, n, inner })[0];
  }

  maxAxis(x: Storage, outer: number, n: number, inner: number): Storage {
    return this.run(inner === 1 ? REDUCE_ROWS : REDUCE_COLS, [x], { op: "max", outer, n, inner })[0];
  }

  softmax(x: Storage, rows: number, n: number, log: boolean): Storage {
    return this.run(SOFTMAX, [x], { rows, n, log })[0];
  }

  permute(x: Storage, shape: readonly number[], perm: readonly number[]): Storage {
    return this.run(PERMUTE, [x], { shape, perm })[0];
  }

  gatherRows(table: Storage, ids: Int32Array, dim: number): Storage {
    if (table instanceof GpuStorage && table.blocks !== null) return this.#blockedGather(table, ids, dim);
    return this.run(GATHER_ROWS, [table], { ids, dim })[0];
  }

  /** {@link gatherRows} from a split table: one dispatch per block, each writing the rows it holds. */
  #blockedGather(table: GpuStorage, ids: Int32Array, dim: number): Storage {
    const op = "gatherRows";
    this.rt.checkAlive(op);
    const blocks = this.#pieces(table, op);
    GATHER_ROWS.check!([table], { ids, dim });
    this.#checkDType(table.dtype, op);
    const out = this.#new(
      ids.length * dim,
      table.dtype,
      `gatherRows: output [${ids.length}, ${dim}] (${table.dtype})`,
    );
    if (ids.length * dim === 0) return out;
    const idWords = this.#words(ids, "gatherRows: scratch");
    const kernel = this.#kernels.get(GATHER_ROWS, {
      WG: WORKGROUP_SIZE,
      ...GATHER_ROWS.specialise([table], { ids, dim }),
    });
    const grid = this.rt.grid1d(ids.length * dim, WORKGROUP_SIZE);
    if (blocks.some((b) => b.start % dim !== 0 || b.size % dim !== 0)) {
      throw new DeviceError(`${op}: the split table's blocks do not hold whole rows of ${dim}`);
    }
    for (const b of blocks) {
      const args = { ids, dim, lo: b.start / dim, hi: (b.start + b.size) / dim };
      const words = packParams(GATHER_ROWS.params, GATHER_ROWS.uniforms(args, []), op);
      this.rt.dispatch(kernel, words, [b.buf, idWords, out.buf!], grid);
    }
    this.rt.release(idWords.buf);
    return out;
  }

  scatterAddRows(src: Storage, ids: Int32Array, rows: number, dim: number): Storage {
    const what = `scatterAddRows: output [${rows}, ${dim}] (${src.dtype})`;
    const layout = blockLayout(rows * dim, dim, dtypeSize(src.dtype), bufferLimit(this.rt), what);
    if (layout === null) return this.run(SCATTER_ADD_ROWS, [src], { ids, rows, dim })[0];
    // A table larger than one binding (the gradient of a split embedding): each block of rows scatters
    // the ids it holds.
    SCATTER_ADD_ROWS.check!([src], { ids, rows, dim });
    const parts = layout.map((b) => {
      const lo = b.start / dim, n = b.size / dim;
      const local = ids.map((id) => (id >= lo && id < lo + n ? id - lo : -1));
      return this.run(SCATTER_ADD_ROWS, [src], { ids: local, rows: n, dim })[0] as GpuStorage;
    });
    return this.#joinBlocks(parts, src.dtype);
  }

  pick(x: Storage, idx: Int32Array, n: number): Storage {
    return this.run(PICK, [x], { idx, n })[0];
  }

  unpick(src: Storage, idx: Int32Array, n: number): Storage {
    return this.run(UNPICK, [src], { idx, n })[0];
  }

  // -------------------------------------------------------------------------------------------------
  // Matrix products

  /** Wraps a GEMM result buffer as a live storage. */
  #adopt(bind: Binding, size: number, dtype: DType): GpuStorage {
    const s = new GpuStorage(bind.buf, size, dtype, this);
    this.#count(size * dtypeSize(dtype));
    return s;
  }

  matmul(a: Storage, b: Storage, args: MatmulArgs, bias?: Storage | null): Storage {
    if (
      b instanceof GpuStorage && b.owner === this && b.blocks !== null && args.transB && !args.transA &&
      args.batch === 1
    ) {
      return this.#blockedHeadMatmul(a, b, args, bias ?? null);
    }
    const [ab, bb] = this.#begin("matmul", a, b);
    // The bias is added in the GEMM's store (or its split-K reduce), not by a separate add.
    const biasBind = bias == null ? null : this.#in(bias, "matmul");
    if (bias != null) {
      this.#sameSize(bias, args.n, "matmul", `bias [${args.n}]`);
      if (bias.dtype !== a.dtype) {
        throw new DTypeError(`matmul: bias is ${bias.dtype} but the operands are ${a.dtype}`);
      }
    }
    const { batch, aBatch, bBatch, m, k, n, transA, transB } = args;
    this.#sameSize(
      a,
      aBatch * m * k,
      "matmul",
      `first operand [${aBatch}, ${transA ? `${k}, ${m}` : `${m}, ${k}`}]`,
    );
    this.#sameSize(
      b,
      bBatch * k * n,
      "matmul",
      `second operand [${bBatch}, ${transB ? `${n}, ${k}` : `${k}, ${n}`}]`,
    );
    if ((aBatch !== 1 && aBatch !== batch) || (bBatch !== 1 && bBatch !== batch)) {
      throw new ShapeError(`matmul: operand batches ${aBatch} and ${bBatch} do not broadcast to ${batch}`);
    }
    const T = a.dtype as WgslType;
    this.#reserve(batch * m * n * dtypeSize(a.dtype), `matmul: output [${batch}, ${m}, ${n}] (${T})`);
    const out = recordGemm(this.#ctx, {
      a: { bind: ab, type: T, trans: transA, zStride: aBatch === 1 ? 0 : m * k },
      b: { bind: bb, type: T, trans: transB, zStride: bBatch === 1 ? 0 : k * n },
      m,
      n,
      k,
      batch,
      bias: biasBind,
      outType: T,
      what: `matmul: output [${batch}, ${m}, ${n}] (${T})`,
    });
    return this.#adopt(out, batch * m * n, a.dtype);
  }

  /**
   * x · Wᵀ for a weight W [n, k] split into row blocks (a tied head larger than one binding: the logits):
   * each block gives its rows of (x · Wᵀ)ᵀ = W · xᵀ, whose blocks pack into one [n, m] that is permuted to
   * [m, n]. The output itself must fit one buffer.
   */
  #blockedHeadMatmul(a: Storage, b: GpuStorage, args: MatmulArgs, bias: Storage | null): Storage {
    const { m, k, n } = args;
    const blocks = this.#pieces(b, "matmul");
    this.#sameSize(b, n * k, "matmul", `second operand [${n}, ${k}]`);
    if (blocks.some((p) => p.size % k !== 0)) this.#in(b, "matmul"); // blocks not of whole rows
    const parts: Storage[] = [];
    try {
      for (const p of blocks) {
        const view = new GpuStorage(p.buf, p.size, b.dtype, this);
        parts.push(this.matmul(view, a, matmulArgs(p.size / k, k, m, { transB: true })));
      }
      const zt = this.pack(parts, blocks.map((p) => (p.start / k) * m), n * m, b.dtype);
      const y = this.permute(zt, [n, m], [1, 0]);
      this.free(zt);
      if (bias === null) return y;
      const withBias = this.binary("add", y, [m, n], bias, [n], [m, n]);
      this.free(y);
      return withBias;
    } finally {
      for (const p of parts) this.free(p);
    }
  }

  // -------------------------------------------------------------------------------------------------
  // Fused LoRA

  #checkLora(op: string, args: LoraForwardArgs | LoraBackwardArgs, bias: Storage | null): void {
    const { m, inFeatures: K, outFeatures: N, rank: R, x } = args;
    const expect: [string, Storage | null, number][] = [
      [`x [${m}, ${K}]`, x, m * K],
      [`weight [${N}, ${K}]`, args.w, args.wQuant ? args.wQuant.words : N * K],
      [`lora_A [${R}, ${K}]`, args.a, R * K],
      [`lora_B [${N}, ${R}]`, args.b, N * R],
      [`bias [${N}]`, bias, N],
    ];
    if ("dy" in args) expect.push([`dy [${m}, ${N}]`, args.dy, m * N]);
    for (const [what, s, size] of expect) {
      if (s === null) continue;
      this.#sameSize(s, size, op, what);
      // The adapters have a dtype of their own (checkLoraDTypes, below).
      if (s === args.a || s === args.b) continue;
      // A quantized weight is f32 words whatever x's dtype.
      const dtype = s === args.w && args.wQuant ? x.dtype : s.dtype;
      if (dtype !== x.dtype) throw new DTypeError(`${op}: ${what} is ${s.dtype} but x is ${x.dtype}`);
    }
    checkLoraDTypes(op, args);
  }

  /** The binding of a given t (`inner`: loraInner's [m, R] f32), checked; null where none is given. */
  #savedInner(op: string, args: LoraForwardArgs | LoraBackwardArgs): Binding | null {
    const t = args.inner;
    if (t === undefined || t === null) return null;
    const bind = this.#in(t, op);
    this.#sameSize(t, args.m * args.rank, op, `inner x·Aᵀ [${args.m}, ${args.rank}]`);
    if (t.dtype !== "f32") throw new DTypeError(`${op}: inner is ${t.dtype}; loraInner makes f32 on WebGPU`);
    return bind;
  }

  loraInner(args: LoraInnerArgs): Storage {
    const op = "loraInner";
    const { m, inFeatures: K, rank: R } = args;
    const [x, a] = this.#begin(op, args.x, args.a);
    this.#sameSize(args.x, m * K, op, `x [${m}, ${K}]`);
    this.#sameSize(args.a, R * K, op, `lora_A [${R}, ${K}]`);
    this.#checkDType(args.x.dtype, op);
    this.#checkDType(args.a.dtype, op);
    this.#reserve(m * R * dtypeSize("f32"), `${op}: x·Aᵀ [${m}, ${R}] (f32)`);
    return this.#adopt(recordLoraInner(this.#ctx, args, { x, a }), m * R, "f32");
  }

  loraForward(args: LoraForwardArgs): Storage {
    const op = "loraForward";
    const [x, w, a, b] = this.#begin(op, args.x, args.w, args.a, args.b);
    const bias = args.bias === null ? null : this.#in(args.bias, op);
    this.#checkLora(op, args, args.bias);
    const inner = this.#savedInner(op, args);
    this.#reserve(
      args.m * args.outFeatures * dtypeSize(args.x.dtype),
      `${op}: output [${args.m}, ${args.outFeatures}]`,
    );
    const y = recordLoraForward(this.#ctx, args, { x, w, a, b, bias, inner });
    return this.#adopt(y, args.m * args.outFeatures, args.x.dtype);
  }

  loraBackward(args: LoraBackwardArgs): LoraGrads {
    const op = "loraBackward";
    const [dy, x, w, a, b] = this.#begin(op, args.dy, args.x, args.w, args.a, args.b);
    this.#checkLora(op, args, null);
    const inner = this.#savedInner(op, args);
    const es = dtypeSize(args.x.dtype);
    const gradBytes =
      ((args.needDx ? args.m * args.inFeatures : 0) + args.rank * (args.inFeatures + args.outFeatures)) * es;
    this.#reserve(
      gradBytes,
      `${op}: gradients of [${args.outFeatures}, ${args.inFeatures}] rank ${args.rank}`,
    );
    const g = recordLoraBackward(this.#ctx, args, { dy, x, w, a, b, inner });
    const { m, inFeatures: K, outFeatures: N, rank: R } = args;
    const T = args.x.dtype;
    return {
      dx: g.dx === null ? null : this.#adopt(g.dx, m * K, T),
      dA: this.#adopt(g.dA, R * K, args.a.dtype),
      dB: this.#adopt(g.dB, N * R, args.b.dtype),
    };
  }

  // -------------------------------------------------------------------------------------------------
  // Lifetime

  sync(): Promise<void> {
    return this.rt.sync();
  }

  destroy(): void {
    if (this.rt.lostReason === null) this.rt.destroy();
  }
}
