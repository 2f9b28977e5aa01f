/**
 * The WebGPU backend: every {@link Backend} primitive as WGSL kernels from `wgsl/`, f32 and (with
 * `shader-f16`) f16 storage, arithmetic in f32. Work is recorded without host round trips; only
 * {@link WebGpuBackend.read} and {@link WebGpuBackend.sync} wait for the GPU.
 * @module
 */
import type {
  Backend,
  BinaryOp,
  FusedDropout,
  LoraBackwardArgs,
  LoraForwardArgs,
  LoraGrads,
  Storage,
  UnaryOp,
} from "../backend.ts";
import { type DType, dtypeSize, f32Bits, type HostArray } from "../../tensor/dtype.ts";
import { dropoutKeepScale, dropoutThreshold } from "../../tensor/random.ts";
import { f16BitsToNumber, numberToF16Bits } from "../../io/safetensors.ts";
import { DeviceError, DTypeError, ShapeError } from "../../errors.ts";
import { GEMM_TILE, GEMM_WG, type KernelName, MAX_RANK, PipelineCache, WORKGROUP_SIZE } from "./kernels.ts";
import type { TemplateParams } from "./template.ts";
import { type Binding, type GpuBuffer, GpuRuntime, type Grid } from "./runtime.ts";

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
  return Math.max(4, Math.ceil((size * dtypeSize(dtype)) / 4) * 4);
}

/** WGSL name of a storage dtype. */
type WgslType = "f32" | "f16";

/** Dropout parameters as kernel words: seed, threshold, keep-scale bits. */
function dropoutWords(d: FusedDropout | null): [number, number, number] {
  if (d === null) return [0, 0, f32Bits(1)];
  return [d.seed >>> 0, dropoutThreshold(d.p), f32Bits(dropoutKeepScale(d.p))];
}

/** The dropout of `position`, or null when absent or p is 0 (no mask, as the CPU reference does). */
function dropoutAt(d: FusedDropout | null, position: "pre" | "post"): FusedDropout | null {
  return d !== null && d.position === position && d.p > 0 ? d : null;
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

/** One operand of a GEMM: its buffer, element type, layout and dropout flag. */
interface GemmOperand {
  bind: Binding;
  type: WgslType;
  /** Stored transposed (see matmul.wgsl). */
  trans: boolean;
  /** Elements between batch entries; 0 broadcasts one matrix over the batch. */
  zStride?: number;
  /** Multiply each element by its dropout factor (keyed by storage index). */
  masked?: boolean;
}

/** A GEMM request: C = alpha · op(A) · op(B), batched. */
interface GemmRequest {
  a: GemmOperand;
  b: GemmOperand;
  m: number;
  n: number;
  k: number;
  batch?: number;
  alpha?: number;
  dropout?: FusedDropout | null;
  outType: WgslType;
  /** Names the op and result for size-limit errors. */
  what: string;
}

/** The WebGPU implementation of {@link Backend}. */
export class WebGpuBackend implements Backend {
  readonly kind = "webgpu" as const;
  readonly description: string;
  /** The GPU plumbing (exposed for tests and tools). */
  readonly rt: GpuRuntime;
  readonly #kernels: PipelineCache;
  readonly #hasF16: boolean;
  #liveBuffers = 0;
  #liveBytes = 0;

  /**
   * @param device a GPUDevice (requested with the adapter's limits and, when offered, `shader-f16`)
   * @param description the adapter's name
   */
  constructor(device: GPUDevice, description: string) {
    this.description = description;
    this.rt = new GpuRuntime(device);
    this.#kernels = new PipelineCache(device, (msg) => this.rt.reportError(msg));
    this.#hasF16 = device.features.has("shader-f16");
  }

  /** The underlying GPUDevice. */
  get gpuDevice(): GPUDevice {
    return this.rt.device;
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

  /** A scratch buffer for intermediates (not counted as live tensor memory). */
  #scratch(size: number, what: string): Binding {
    const bytes = storageBytes(size, "f32");
    return { buf: this.rt.alloc(bytes, what), bytes };
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

  /** Workgroups for `n` invocations of the element-wise kernels, folded onto two grid dimensions. */
  #grid1d(n: number): Grid {
    return this.#fold(Math.ceil(n / WORKGROUP_SIZE));
  }

  /** `groups` workgroups folded onto two grid dimensions (kernels index them row-major). */
  #fold(groups: number): Grid {
    const max = this.rt.limits.maxComputeWorkgroupsPerDimension;
    if (groups <= max) return [groups, 1, 1];
    return [max, Math.ceil(groups / max), 1];
  }

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
      this.rt.dispatch(this.#kernel(name, spec), params, [...inputs, this.#bind(out)], this.#grid1d(size));
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
      this.rt.dispatch(k, [outer, n, negInf], [xb, this.#bind(out)], this.#fold(outer));
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
      this.rt.dispatch(k, [rows, n, f32Bits(-Infinity)], [xb, this.#bind(out)], this.#fold(rows));
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------------
  // Matrix products

  /** How many k slices a GEMM with few output tiles splits into, so that enough workgroups run. */
  #splitCount(m: number, n: number, k: number): number {
    const tiles = Math.ceil(m / GEMM_TILE.BM) * Math.ceil(n / GEMM_TILE.BN);
    if (tiles >= 128 || k < 128) return 1;
    let s = Math.min(Math.floor(k / 64), Math.ceil(256 / tiles), 64);
    while (s > 1 && s * m * n * 4 > this.rt.limits.maxStorageBufferBindingSize) s = Math.floor(s / 2);
    return Math.max(1, s);
  }

  /** Records C = alpha · op(A) · op(B) into a new buffer of batch·m·n `outType` elements. */
  #gemm(req: GemmRequest): Binding {
    const { a, b, m, n, k, outType } = req;
    const batch = req.batch ?? 1;
    const alpha = req.alpha ?? 1;
    const outBytes = storageBytes(batch * m * n, outType);
    const out = { buf: this.rt.alloc(outBytes, req.what), bytes: outBytes };
    if (batch * m * n === 0) return out;
    const { BM, BN, BK } = GEMM_TILE;
    const grid: [number, number] = [Math.ceil(n / BN), Math.ceil(m / BM)];
    const [seed, threshold, keep] = dropoutWords(req.dropout ?? null);
    const spec = (cType: WgslType) => ({
      A_T: a.type,
      B_T: b.type,
      C_T: cType,
      TRANS_A: a.trans,
      TRANS_B: b.trans,
      MASK_A: a.masked === true,
      MASK_B: b.masked === true,
      ...GEMM_TILE,
      WG: GEMM_WG,
    });
    const splits = batch === 1 ? this.#splitCount(m, n, k) : 1;
    if (splits === 1) {
      const kernel = this.#kernels.get("matmul", spec(outType));
      const maxZ = this.rt.limits.maxComputeWorkgroupsPerDimension;
      for (let z0 = 0; z0 < batch; z0 += maxZ) {
        const params = [
          m,
          n,
          k,
          a.zStride ?? 0,
          b.zStride ?? 0,
          m * n,
          0,
          k,
          z0,
          seed,
          threshold,
          keep,
          f32Bits(alpha),
        ];
        this.rt.dispatch(kernel, params, [a.bind, b.bind, out], [
          grid[0],
          grid[1],
          Math.min(maxZ, batch - z0),
        ]);
      }
      return out;
    }
    const chunk = Math.ceil(Math.ceil(k / splits) / BK) * BK;
    const slices = Math.ceil(k / chunk);
    const part = this.#scratch(slices * m * n, `${req.what} (split-K partial sums)`);
    const params = [m, n, k, 0, 0, m * n, chunk, chunk, 0, seed, threshold, keep, f32Bits(1)];
    this.rt.dispatch(this.#kernels.get("matmul", spec("f32")), params, [a.bind, b.bind, part], [
      ...grid,
      slices,
    ]);
    const reduce = this.#kernel("splitk_reduce", { T: outType });
    this.rt.dispatch(reduce, [m * n, slices, f32Bits(alpha)], [part, out], this.#grid1d(m * n));
    this.rt.release(part.buf);
    return out;
  }

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
    const out = this.#gemm({
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

  /** t = drop_pre(x) · Aᵀ as f32 scratch [m, rank]: the intermediate the fused path never stores. */
  #loraInner(args: LoraForwardArgs | LoraBackwardArgs, xb: Binding, ab: Binding, op: string): Binding {
    const T = args.x.dtype as WgslType;
    const pre = dropoutAt(args.dropout, "pre");
    return this.#gemm({
      a: { bind: xb, type: T, trans: false, masked: pre !== null },
      b: { bind: ab, type: T, trans: true },
      m: args.m,
      n: args.rank,
      k: args.inFeatures,
      dropout: pre,
      outType: "f32",
      what: `${op}: x·Aᵀ [${args.m}, ${args.rank}]`,
    });
  }

  /** Records the two-phase output kernel (lora_out.wgsl) into a new storage of [m, n]. */
  #loraOut(o: {
    p: Binding;
    q: Binding;
    x: Binding;
    w: Binding;
    bias: Binding | null;
    m: number;
    n: number;
    k: number;
    r: number;
    scale: number;
    dropout: FusedDropout | null;
    trans: boolean;
    dtype: DType;
    what: string;
  }): GpuStorage {
    const out = this.#new(o.m * o.n, o.dtype, o.what);
    if (o.m * o.n === 0) return out;
    const spec = {
      T: o.dtype,
      TRANS: o.trans,
      MASK: o.dropout !== null,
      BIAS: o.bias !== null,
      ...GEMM_TILE,
      WG: GEMM_WG,
    };
    const params = [o.m, o.n, o.k, o.r, ...dropoutWords(o.dropout), f32Bits(o.scale)];
    const grid: Grid = [Math.ceil(o.n / GEMM_TILE.BN), Math.ceil(o.m / GEMM_TILE.BM), 1];
    this.rt.dispatch(this.#kernels.get("lora_out", spec), params, [
      o.p,
      o.q,
      o.x,
      o.w,
      o.bias,
      this.#bind(out),
    ], grid);
    return out;
  }

  loraForward(args: LoraForwardArgs): Storage {
    const op = "loraForward";
    const [xb, wb, ab, bb] = this.#begin(op, args.x, args.w, args.a, args.b);
    const biasb = args.bias === null ? null : this.#in(args.bias, op);
    this.#checkLora(op, args, args.bias);
    const t = this.#loraInner(args, xb, ab, op);
    const y = this.#loraOut({
      p: t,
      q: bb,
      x: xb,
      w: wb,
      bias: biasb,
      m: args.m,
      n: args.outFeatures,
      k: args.inFeatures,
      r: args.rank,
      scale: args.scale,
      dropout: dropoutAt(args.dropout, "post"),
      trans: true,
      dtype: args.x.dtype,
      what: `${op}: output [${args.m}, ${args.outFeatures}] (${args.x.dtype})`,
    });
    this.rt.release(t.buf);
    return y;
  }

  loraBackward(args: LoraBackwardArgs): LoraGrads {
    const op = "loraBackward";
    const [dyb, xb, wb, ab, bb] = this.#begin(op, args.dy, args.x, args.w, args.a, args.b);
    this.#checkLora(op, args, null);
    const { m, inFeatures: K, outFeatures: N, rank: R, scale } = args;
    const T = args.x.dtype as WgslType;
    const pre = dropoutAt(args.dropout, "pre"), post = dropoutAt(args.dropout, "post");
    // g = dyl · B [m, R], dyl = post-mask ⊙ dy.
    const g = this.#gemm({
      a: { bind: dyb, type: T, trans: false, masked: post !== null },
      b: { bind: bb, type: T, trans: false },
      m,
      n: R,
      k: N,
      dropout: post,
      outType: "f32",
      what: `${op}: dy·B [${m}, ${R}]`,
    });
    // dx = dy · W + scale · pre-mask ⊙ (g · A).
    const dx = args.needDx
      ? this.#loraOut({
        p: g,
        q: ab,
        x: dyb,
        w: wb,
        bias: null,
        m,
        n: K,
        k: N,
        r: R,
        scale,
        dropout: pre,
        trans: false,
        dtype: T,
        what: `${op}: dx [${m}, ${K}] (${T})`,
      })
      : null;
    // dA = scale · gᵀ · drop_pre(x) [R, K], summed over tokens.
    const dA = this.#gemm({
      a: { bind: g, type: "f32", trans: true },
      b: { bind: xb, type: T, trans: false, masked: pre !== null },
      m: R,
      n: K,
      k: m,
      alpha: scale,
      dropout: pre,
      outType: T,
      what: `${op}: dA [${R}, ${K}] (${T})`,
    });
    // dB = scale · dylᵀ · t [N, R], with t recomputed rather than saved by the forward.
    const t = this.#loraInner(args, xb, ab, op);
    const dB = this.#gemm({
      a: { bind: dyb, type: T, trans: true, masked: post !== null },
      b: { bind: t, type: "f32", trans: false },
      m: N,
      n: R,
      k: m,
      alpha: scale,
      dropout: post,
      outType: T,
      what: `${op}: dB [${N}, ${R}] (${T})`,
    });
    this.rt.release(g.buf);
    this.rt.release(t.buf);
    return { dx, dA: this.#adopt(dA, R * K, T), dB: this.#adopt(dB, N * R, T) };
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
