/**
 * The WebGPU backend: every {@link Backend} primitive as WGSL kernels from `wgsl/`, f32 and (with
 * `shader-f16`) f16 storage, arithmetic in f32. Work is recorded without host round trips; only
 * {@link WebGpuBackend.read} and {@link WebGpuBackend.sync} wait for the GPU.
 * @module
 */
import type {
  Backend,
  BinaryOp,
  LoraBackwardArgs,
  LoraForwardArgs,
  LoraGrads,
  Storage,
  UnaryOp,
} from "../backend.ts";
import { type DType, dtypeSize, f32Bits, type HostArray } from "../../core/dtype.ts";
import { f16BitsToNumber, numberToF16Bits } from "../../core/half.ts";
import { DeviceError, DTypeError, ShapeError } from "../../core/errors.ts";
import { type KernelName, MAX_RANK, PipelineCache, WORKGROUP_SIZE } from "./kernels.ts";
import type { TemplateParams } from "./template.ts";
import { type Binding, type GpuBuffer, GpuRuntime } from "./runtime.ts";
import { bufferBytes, dropoutWords, type GemmContext, recordGemm, type WgslType } from "./gemm.ts";
import { DIRECT_PROFILE, type GemmProfile, TILED_PROFILE } from "./gemm_plan.ts";
import { recordLoraBackward, recordLoraForward } from "./lora.ts";

/** WebGPU storage: a pooled device buffer plus element count and dtype. */
export class GpuStorage implements Storage {
  /** The device buffer; null once freed. */
  buf: GpuBuffer | null;
  constructor(buf: GpuBuffer, readonly size: number, readonly dtype: DType, readonly owner: WebGpuBackend) {
    this.buf = buf;
  }
}

/** Bytes a tensor of `size` elements of `dtype` occupies on the GPU (padded to 4, at least 4). */
function storageBytes(size: number, dtype: DType): number {
  return bufferBytes(size, dtype as WgslType);
}

/** Strides of `shape` right-aligned into `outShape`'s rank, 0 along broadcast axes. */
function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const strides = new Array<number>(outShape.length).fill(0);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[outShape.length - shape.length + i] = shape[i] === 1 ? 0 : s;
    s *= shape[i];
  }
  return strides;
}

/**
 * Drops extent-1 axes and merges neighbours that every stride list walks contiguously, so that typical
 * shapes reach the kernels with rank 1 or 2. Returns at least one axis.
 */
export function collapseAxes(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): { shape: number[]; strides: number[][] } {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, j) => outStrides[j][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, j) => (outStrides[j][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strides.forEach((s, j) => outStrides[j].push(s[d]));
    }
  }
  if (outShape.length === 0) return { shape: [1], strides: strides.map(() => [0]) };
  return { shape: outShape, strides: outStrides };
}

/** `values` padded with zeros to `n` words. */
function padded(values: readonly number[], n: number): number[] {
  return [...values, ...new Array<number>(n - values.length).fill(0)];
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

  /**
   * @param device a GPUDevice (requested with the adapter's limits and, when offered, `shader-f16`)
   * @param description the adapter's name
   * @param software whether the adapter is a software rasteriser: it then gets the GEMM profile made for
   *   CPUs (gemm_plan.ts)
   */
  constructor(device: GPUDevice, description: string, software = false) {
    this.description = description;
    this.rt = new GpuRuntime(device);
    this.#kernels = new PipelineCache(device, (msg) => this.rt.reportError(msg));
    this.#ctx = { rt: this.rt, kernels: this.#kernels, profile: software ? DIRECT_PROFILE : TILED_PROFILE };
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
    if (profile.tiles.length === 0) throw new RangeError("gemmProfile: a profile needs at least one tile");
    this.#ctx.profile = profile;
  }

  /** Number of compiled pipelines (for tests of the cache). */
  get pipelineCount(): number {
    return this.#kernels.size;
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
    if (s.buf === null) throw new DeviceError(`${op}: storage of ${s.size} elements was freed`);
    return { buf: s.buf, bytes: storageBytes(s.size, s.dtype) };
  }

  /** A new live storage. */
  #new(size: number, dtype: DType, what: string): GpuStorage {
    const bytes = storageBytes(size, dtype);
    const s = new GpuStorage(this.rt.alloc(bytes, what), size, dtype, this);
    this.#liveBuffers++;
    this.#liveBytes += size * dtypeSize(dtype);
    return s;
  }

  #bind(s: GpuStorage): Binding {
    return { buf: s.buf!, bytes: storageBytes(s.size, s.dtype) };
  }

  /** Uploads 32-bit words to a scratch buffer (ids, index lists). */
  #words(words: Uint32Array | Int32Array, what: string): Binding {
    const bytes = Math.max(4, words.byteLength);
    const b = { buf: this.rt.alloc(bytes, what), bytes };
    this.rt.write(b.buf, words);
    return b;
  }

  #sameSize(s: Storage, size: number, op: string, what: string): void {
    if (s.size !== size) throw new ShapeError(`${op}: ${what} has ${s.size} elements, expected ${size}`);
  }

  upload(data: ArrayLike<number>, dtype: DType): Storage {
    this.rt.checkAlive("upload");
    const t = this.#checkDType(dtype, "upload");
    const s = this.#new(data.length, dtype, `upload: tensor of ${data.length} elements (${dtype})`);
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

  async read(s: Storage): Promise<HostArray> {
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
    if (!(s instanceof GpuStorage) || s.owner !== this || s.buf === null) return;
    this.rt.release(s.buf);
    s.buf = null;
    this.#liveBuffers--;
    this.#liveBytes -= s.size * dtypeSize(s.dtype);
  }

  memory(): { buffers: number; bytes: number } {
    return { buffers: this.#liveBuffers, bytes: this.#liveBytes };
  }

  // -------------------------------------------------------------------------------------------------
  // Dispatch helpers

  #kernel(name: KernelName, spec: TemplateParams) {
    return this.#kernels.get(name, { WG: WORKGROUP_SIZE, ...spec });
  }

  /** Runs a one-invocation-per-element kernel writing a new storage of `size` elements. */
  #map(
    name: KernelName,
    spec: TemplateParams,
    params: readonly number[],
    inputs: readonly Binding[],
    size: number,
    dtype: DType,
    what: string,
  ): GpuStorage {
    const out = this.#new(size, dtype, what);
    if (size > 0) {
      this.rt.dispatch(
        this.#kernel(name, spec),
        params,
        [...inputs, this.#bind(out)],
        this.rt.grid1d(size, WORKGROUP_SIZE),
      );
    }
    return out;
  }

  #begin(op: string, ...inputs: Storage[]): Binding[] {
    this.rt.checkAlive(op);
    return inputs.map((s) => this.#in(s, op));
  }

  // -------------------------------------------------------------------------------------------------
  // Element-wise

  fill(size: number, value: number, dtype: DType): Storage {
    this.rt.checkAlive("fill");
    const T = this.#checkDType(dtype, "fill");
    return this.#map(
      "fill",
      { T },
      [size, f32Bits(value)],
      [],
      size,
      dtype,
      `fill: output of ${size} elements (${T})`,
    );
  }

  cast(x: Storage, dtype: DType): Storage {
    const [xb] = this.#begin("cast", x);
    const T = this.#checkDType(dtype, "cast");
    const what = `cast: output of ${x.size} elements (${T})`;
    return this.#map("cast", { S: x.dtype, T }, [x.size], [xb], x.size, dtype, what);
  }

  unary(op: UnaryOp, x: Storage): Storage {
    const [xb] = this.#begin(op, x);
    const what = `${op}: output of ${x.size} elements (${x.dtype})`;
    return this.#map("unary", { T: x.dtype, OP: op }, [x.size], [xb], x.size, x.dtype, what);
  }

  affine(x: Storage, mul: number, add: number): Storage {
    const [xb] = this.#begin("affine", x);
    const params = [x.size, f32Bits(mul), f32Bits(add)];
    return this.#map(
      "affine",
      { T: x.dtype },
      params,
      [xb],
      x.size,
      x.dtype,
      `affine: output of ${x.size} elements`,
    );
  }

  binary(
    op: BinaryOp,
    a: Storage,
    aShape: readonly number[],
    b: Storage,
    bShape: readonly number[],
    outShape: readonly number[],
  ): Storage {
    const [ab, bb] = this.#begin(op, a, b);
    const prod = (s: readonly number[]) => s.reduce((p, d) => p * d, 1);
    if (a.size !== prod(aShape) || b.size !== prod(bShape)) {
      throw new ShapeError(
        `${op}: operand sizes ${a.size} and ${b.size} do not match shapes [${aShape}] and [${bShape}]`,
      );
    }
    const n = prod(outShape);
    const c = collapseAxes(outShape, [
      broadcastStrides(aShape, outShape),
      broadcastStrides(bShape, outShape),
    ]);
    if (c.shape.length > MAX_RANK) {
      throw new ShapeError(
        `${op}: broadcasting [${aShape}] with [${bShape}] needs ${c.shape.length} axes (at most ${MAX_RANK})`,
      );
    }
    const params = [
      n,
      c.shape.length,
      0,
      0,
      ...padded(c.shape, MAX_RANK),
      ...padded(c.strides[0], MAX_RANK),
      ...padded(c.strides[1], MAX_RANK),
    ];
    const what = `${op}: output [${outShape}] (${a.dtype})`;
    return this.#map("binary", { T: a.dtype, OP: op, MAX_RANK }, params, [ab, bb], n, a.dtype, what);
  }

  dropoutMask(size: number, p: number, seed: number, dtype: DType): Storage {
    this.rt.checkAlive("dropoutMask");
    const T = this.#checkDType(dtype, "dropoutMask");
    const params = dropoutWords({ p, seed, position: "post" });
    const what = `dropoutMask: output of ${size} elements (${T})`;
    return this.#map("dropout_mask", { T }, [size, ...params], [], size, dtype, what);
  }

  // -------------------------------------------------------------------------------------------------
  // Reductions

  #reduce(op: "sum" | "max", x: Storage, outer: number, n: number, inner: number): Storage {
    const name = op === "sum" ? "sumAxis" : "maxAxis";
    const [xb] = this.#begin(name, x);
    this.#sameSize(x, outer * n * inner, name, `input [${outer}, ${n}, ${inner}]`);
    const size = outer * inner;
    const what = `${name}: output [${outer}, ${inner}] (${x.dtype})`;
    const negInf = f32Bits(-Infinity);
    if (inner !== 1) {
      return this.#map(
        "reduce_cols",
        { T: x.dtype, OP: op },
        [outer, n, inner, negInf],
        [xb],
        size,
        x.dtype,
        what,
      );
    }
    const out = this.#new(size, x.dtype, what);
    if (size > 0) {
      const k = this.#kernel("reduce_rows", { T: x.dtype, OP: op });
      this.rt.dispatch(k, [outer, n, negInf], [xb, this.#bind(out)], this.rt.fold(outer));
    }
    return out;
  }

  sumAxis(x: Storage, outer: number, n: number, inner: number): Storage {
    return this.#reduce("sum", x, outer, n, inner);
  }

  maxAxis(x: Storage, outer: number, n: number, inner: number): Storage {
    return this.#reduce("max", x, outer, n, inner);
  }

  softmax(x: Storage, rows: number, n: number, log: boolean): Storage {
    const op = log ? "logSoftmax" : "softmax";
    const [xb] = this.#begin(op, x);
    this.#sameSize(x, rows * n, op, `input [${rows}, ${n}]`);
    const out = this.#new(rows * n, x.dtype, `${op}: output [${rows}, ${n}] (${x.dtype})`);
    if (rows * n > 0) {
      const k = this.#kernel("softmax", { T: x.dtype, LOG: log });
      this.rt.dispatch(k, [rows, n, f32Bits(-Infinity)], [xb, this.#bind(out)], this.rt.fold(rows));
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------------
  // Matrix products

  /** Wraps a GEMM result buffer as a live storage. */
  #adopt(bind: Binding, size: number, dtype: DType): GpuStorage {
    const s = new GpuStorage(bind.buf, size, dtype, this);
    this.#liveBuffers++;
    this.#liveBytes += size * dtypeSize(dtype);
    return s;
  }

  matmul(
    a: Storage,
    b: Storage,
    args: {
      batch: number;
      aBatch: number;
      bBatch: number;
      m: number;
      k: number;
      n: number;
      transA: boolean;
      transB: boolean;
    },
  ): Storage {
    const [ab, bb] = this.#begin("matmul", a, b);
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
    const out = recordGemm(this.#ctx, {
      a: { bind: ab, type: T, trans: transA, zStride: aBatch === 1 ? 0 : m * k },
      b: { bind: bb, type: T, trans: transB, zStride: bBatch === 1 ? 0 : k * n },
      m,
      n,
      k,
      batch,
      outType: T,
      what: `matmul: output [${batch}, ${m}, ${n}] (${T})`,
    });
    return this.#adopt(out, batch * m * n, a.dtype);
  }

  permute(x: Storage, shape: readonly number[], perm: readonly number[]): Storage {
    const [xb] = this.#begin("permute", x);
    const rank = shape.length;
    const inStrides = new Array<number>(rank);
    let s = 1;
    for (let i = rank - 1; i >= 0; i--) {
      inStrides[i] = s;
      s *= shape[i];
    }
    this.#sameSize(x, s, "permute", `input [${shape}]`);
    const outShape = perm.map((p) => shape[p]);
    const c = collapseAxes(outShape, [perm.map((p) => inStrides[p])]);
    if (c.shape.length > MAX_RANK) {
      throw new ShapeError(
        `permute: [${perm}] of [${shape}] needs ${c.shape.length} axes (at most ${MAX_RANK})`,
      );
    }
    const params = [s, c.shape.length, 0, 0, ...padded(c.shape, MAX_RANK), ...padded(c.strides[0], MAX_RANK)];
    const what = `permute: output [${outShape}] (${x.dtype})`;
    return this.#map("permute", { T: x.dtype, MAX_RANK }, params, [xb], s, x.dtype, what);
  }

  // -------------------------------------------------------------------------------------------------
  // Indexing

  gatherRows(table: Storage, ids: Int32Array, dim: number): Storage {
    const [tb] = this.#begin("gatherRows", table);
    const rows = dim === 0 ? 0 : table.size / dim;
    for (let i = 0; i < ids.length; i++) {
      if (!(ids[i] >= 0 && ids[i] < rows)) {
        throw new ShapeError(
          `gatherRows: id ${ids[i]} at position ${i} is out of range for a table of ${rows} rows`,
        );
      }
    }
    const what = `gatherRows: output [${ids.length}, ${dim}] (${table.dtype})`;
    const size = ids.length * dim;
    if (size === 0) return this.#new(0, table.dtype, what);
    const idb = this.#words(ids, "gatherRows: ids");
    const out = this.#map(
      "gather_rows",
      { T: table.dtype },
      [ids.length, dim],
      [tb, idb],
      size,
      table.dtype,
      what,
    );
    this.rt.release(idb.buf);
    return out;
  }

  scatterAddRows(src: Storage, ids: Int32Array, rows: number, dim: number): Storage {
    const [sb] = this.#begin("scatterAddRows", src);
    this.#sameSize(src, ids.length * dim, "scatterAddRows", `source [${ids.length}, ${dim}]`);
    // Compressed rows: csr[r] .. csr[r + 1] delimit the source rows of output row r.
    const csr = new Uint32Array(rows + 1 + ids.length);
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] >= rows) {
        throw new ShapeError(
          `scatterAddRows: id ${ids[i]} at position ${i} is out of range for ${rows} rows`,
        );
      }
      if (ids[i] >= 0) csr[ids[i] + 1]++;
    }
    for (let r = 0; r < rows; r++) csr[r + 1] += csr[r];
    const fillAt = csr.slice(0, rows);
    for (let i = 0; i < ids.length; i++) if (ids[i] >= 0) csr[rows + 1 + fillAt[ids[i]]++] = i;
    const what = `scatterAddRows: output [${rows}, ${dim}] (${src.dtype})`;
    if (rows * dim === 0) return this.#new(0, src.dtype, what);
    const cb = this.#words(csr, "scatterAddRows: ids");
    const out = this.#map(
      "scatter_add_rows",
      { T: src.dtype },
      [rows, dim],
      [sb, cb],
      rows * dim,
      src.dtype,
      what,
    );
    this.rt.release(cb.buf);
    return out;
  }

  pick(x: Storage, idx: Int32Array, n: number): Storage {
    const [xb] = this.#begin("pick", x);
    this.#sameSize(x, idx.length * n, "pick", `input [${idx.length}, ${n}]`);
    for (let i = 0; i < idx.length; i++) {
      if (idx[i] >= n) {
        throw new ShapeError(`pick: index ${idx[i]} at row ${i} is out of range for ${n} columns`);
      }
    }
    const what = `pick: output [${idx.length}] (${x.dtype})`;
    if (idx.length === 0) return this.#new(0, x.dtype, what);
    const ib = this.#words(idx, "pick: indices");
    const out = this.#map("pick", { T: x.dtype }, [idx.length, n], [xb, ib], idx.length, x.dtype, what);
    this.rt.release(ib.buf);
    return out;
  }

  unpick(src: Storage, idx: Int32Array, n: number): Storage {
    const [sb] = this.#begin("unpick", src);
    this.#sameSize(src, idx.length, "unpick", `source [${idx.length}]`);
    const what = `unpick: output [${idx.length}, ${n}] (${src.dtype})`;
    if (idx.length * n === 0) return this.#new(0, src.dtype, what);
    const ib = this.#words(idx, "unpick: indices");
    const out = this.#map(
      "unpick",
      { T: src.dtype },
      [idx.length, n],
      [sb, ib],
      idx.length * n,
      src.dtype,
      what,
    );
    this.rt.release(ib.buf);
    return out;
  }

  // -------------------------------------------------------------------------------------------------
  // Fused LoRA

  #checkLora(op: string, args: LoraForwardArgs | LoraBackwardArgs, bias: Storage | null): void {
    const { m, inFeatures: K, outFeatures: N, rank: R, x } = args;
    const expect: [string, Storage | null, number][] = [
      [`x [${m}, ${K}]`, x, m * K],
      [`weight [${N}, ${K}]`, args.w, N * K],
      [`lora_A [${R}, ${K}]`, args.a, R * K],
      [`lora_B [${N}, ${R}]`, args.b, N * R],
      [`bias [${N}]`, bias, N],
    ];
    if ("dy" in args) expect.push([`dy [${m}, ${N}]`, args.dy, m * N]);
    for (const [what, s, size] of expect) {
      if (s === null) continue;
      this.#sameSize(s, size, op, what);
      if (s.dtype !== x.dtype) throw new DTypeError(`${op}: ${what} is ${s.dtype} but x is ${x.dtype}`);
    }
  }

  loraForward(args: LoraForwardArgs): Storage {
    const op = "loraForward";
    const [x, w, a, b] = this.#begin(op, args.x, args.w, args.a, args.b);
    const bias = args.bias === null ? null : this.#in(args.bias, op);
    this.#checkLora(op, args, args.bias);
    const y = recordLoraForward(this.#ctx, args, { x, w, a, b, bias });
    return this.#adopt(y, args.m * args.outFeatures, args.x.dtype);
  }

  loraBackward(args: LoraBackwardArgs): LoraGrads {
    const op = "loraBackward";
    const [dy, x, w, a, b] = this.#begin(op, args.dy, args.x, args.w, args.a, args.b);
    this.#checkLora(op, args, null);
    const g = recordLoraBackward(this.#ctx, args, { dy, x, w, a, b });
    const { m, inFeatures: K, outFeatures: N, rank: R } = args;
    const T = args.x.dtype;
    return {
      dx: g.dx === null ? null : this.#adopt(g.dx, m * K, T),
      dA: this.#adopt(g.dA, R * K, T),
      dB: this.#adopt(g.dB, N * R, T),
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
