/**
 * The Tensor: an n-d array on a device, with optional gradient tracking. Values live in backend
 * storage; a tensor never changes shape or dtype, but optimizers and `loadStateDict` may replace its
 * storage in place so that references held by layers and optimizers stay valid.
 * @module
 */
import type { Storage } from "../backend/backend.ts";
import { currentDevice, Device } from "../backend/device.ts";
import { type DType, type HostArray, isDType } from "../core/dtype.ts";
import { type GradNode, isGradEnabled, trackTensor } from "./graph.ts";
import { Rng } from "../core/random.ts";
import { formatTensor, MAX_READ_FOR_PRINT } from "./format.ts";
import {
  AutogradError,
  ConfigError,
  DeviceError,
  DTypeError,
  LoraError,
  ShapeError,
} from "../core/errors.ts";

/** Options shared by tensor constructors. */
export interface TensorOptions {
  device?: Device;
  dtype?: DType;
  requiresGrad?: boolean;
}

// Frees device memory of tensors the program dropped without dispose().
const reclaim = new FinalizationRegistry<{ device: Device; storage: Storage }>(({ device, storage }) => {
  if (device.lostReason === null) device.backend.free(storage);
});

/** Number of elements of a shape. */
export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Throws ShapeError naming `op` unless every entry is a non-negative integer. */
export function checkShape(shape: readonly number[], op: string): void {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new ShapeError(
      `${op}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`,
    );
  }
}

/**
 * The method forms of the functional ops (`t.add(u)` is `add(t, u)`) and `backward`. They call ops.ts,
 * which imports this module, so methods.ts (imported by the folder's entry, mod.ts) installs them on the
 * prototype; declaring them here, merged into the class, keeps the imports one-way.
 */
export interface Tensor {
  /**
   * Back-propagates from this tensor, accumulating into `.grad` of every leaf that requires grad.
   * A scalar needs no argument; otherwise pass d(loss)/d(this) of this tensor's shape.
   */
  backward(grad?: Tensor): void;
  /** A new leaf sharing nothing with the graph: same values, requiresGrad false. */
  detach(): Tensor;
  /** `add(this, o)`. */
  add(o: Tensor | number): Tensor;
  /** `sub(this, o)`. */
  sub(o: Tensor | number): Tensor;
  /** `mul(this, o)`. */
  mul(o: Tensor | number): Tensor;
  /** `div(this, o)`. */
  div(o: Tensor | number): Tensor;
  /** `matmul(this, o)`. */
  matmul(o: Tensor): Tensor;
  /** `scale(this, s)`. */
  scale(s: number): Tensor;
  /** `sum(this, dim, keepDim)`. */
  sum(dim?: number | number[], keepDim?: boolean): Tensor;
  /** `mean(this, dim, keepDim)`. */
  mean(dim?: number | number[], keepDim?: boolean): Tensor;
  /** `reshape(this, shape)`. */
  reshape(shape: readonly number[]): Tensor;
  /** `transpose(this, dim0, dim1)`. */
  transpose(dim0: number, dim1: number): Tensor;
  /** `softmax(this, dim)`. */
  softmax(dim?: number): Tensor;
  /** `logSoftmax(this, dim)`. */
  logSoftmax(dim?: number): Tensor;
  /** `silu(this)`. */
  silu(): Tensor;
  /** `relu(this)`. */
  relu(): Tensor;
  /** `cast(this, dtype)`. */
  cast(dtype: DType): Tensor;
}

/** An n-dimensional array on a device. */
export class Tensor {
  /** Dimensions, row-major. */
  readonly shape: readonly number[];
  readonly dtype: DType;
  /** Whether backward() computes a gradient for this tensor. */
  requiresGrad: boolean;
  /** Accumulated gradient (set to null to clear). */
  grad: Tensor | null = null;
  /** @internal how this tensor was computed; null for leaves. */
  _node: GradNode<Tensor> | null = null;
  /** @internal survives {@link tidy} scopes (leaf gradients, optimizer state, kept tensors). */
  _retained = false;
  #storage: Storage | null;
  #device: Device;
  #meta = false;

  /** @internal use the constructor functions ({@link tensor}, {@link zeros}, ...) instead. */
  constructor(
    storage: Storage,
    shape: readonly number[],
    dtype: DType,
    device: Device,
    requiresGrad = false,
  ) {
    this.#storage = storage;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.#device = device;
    this.requiresGrad = requiresGrad;
    if (storage !== null) reclaim.register(this, { device, storage }, this);
    trackTensor(this);
  }

  /** The device holding the values. */
  get device(): Device {
    return this.#device;
  }

  /**
   * @internal a tensor whose values do not exist yet (PyTorch's meta device): shape and dtype only.
   * Using it is a DeviceError until loadStateDict (or {@link _replaceStorage}) gives it values.
   */
  static _meta(shape: readonly number[], dtype: DType, device: Device): Tensor {
    const t = new Tensor(null as unknown as Storage, shape, dtype, device, false);
    t.#meta = true;
    return t;
  }

  /** Whether the values are not materialised yet (see {@link Tensor._meta}). */
  get isMeta(): boolean {
    return this.#meta;
  }

  /** Number of elements. */
  get size(): number {
    return shapeSize(this.shape);
  }

  /** Number of dimensions. */
  get ndim(): number {
    return this.shape.length;
  }

  /** True for tensors not produced by a recorded op. */
  get isLeaf(): boolean {
    return this._node === null;
  }

  /** @internal the storage, checked alive. */
  storage(op = "tensor"): Storage {
    if (this.#meta) {
      throw new DeviceError(
        `${op}: tensor [${this.shape}] is not materialised yet (meta); load its values with loadStateDict first`,
      );
    }
    if (this.#storage === null) throw new DeviceError(`${op}: tensor of shape [${this.shape}] was disposed`);
    this.device.checkAlive(op);
    return this.#storage;
  }

  /** @internal replaces the values in place (same shape and dtype); frees the old storage. */
  _replaceStorage(storage: Storage, device: Device = this.#device): void {
    const old = this.#meta ? null : this.storage("replace");
    if (old === storage) return;
    reclaim.unregister(this);
    if (old !== null && this.#device.lostReason === null) this.#device.backend.free(old);
    this.#storage = storage;
    this.#device = device;
    this.#meta = false;
    if (storage !== null) reclaim.register(this, { device, storage }, this);
  }

  /**
   * @internal replaces the values in place by those of `src` (same shape and dtype), taking over its
   * storage without a copy; `src` is disposed. Use this rather than `_replaceStorage(src.storage())`,
   * which leaves `src` owning the storage, so collecting `src` would free this tensor's values.
   */
  _assign(src: Tensor): void {
    if (src === this) return;
    if (src.dtype !== this.dtype || src.shape.join() !== this.shape.join()) {
      throw new ShapeError(
        `assign: source [${src.shape}] ${src.dtype} does not match target [${this.shape}] ${this.dtype}`,
      );
    }
    const storage = src.storage("assign");
    reclaim.unregister(src);
    src.#storage = null;
    src._node = null;
    this._replaceStorage(storage, src.device);
  }

  /** Whether dispose() was called. */
  get isDisposed(): boolean {
    return this.#storage === null && !this.#meta;
  }

  /** Copies the values to the host: Float64Array for f64, Float32Array otherwise. */
  async data(): Promise<HostArray> {
    const storage = this.storage("data");
    try {
      return await this.device.backend.read(storage);
    } catch (e) {
      if (e instanceof LoraError) throw e;
      // A device lost while the read waited can surface as the runtime's own exception (a DOMException
      // "OperationError" on WebGPU); callers catch DeviceError for every device failure.
      throw new DeviceError(
        `data: reading tensor [${this.shape}] from ${this.device} failed: ${(e as Error)?.name}: ${
          (e as Error)?.message ?? e
        }`,
      );
    }
  }

  /** Synchronous copy of the values; CPU tensors only (GPU reads are async: use {@link data}). */
  dataSync(): HostArray {
    if (this.device.kind !== "cpu") {
      throw new DeviceError(`dataSync: tensor [${this.shape}] lives on ${this.device}; use await t.data()`);
    }
    return this.device.backend.readSync(this.storage("dataSync"));
  }

  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new ShapeError(`item: tensor has shape [${this.shape}], not one element`);
    return (await this.data())[0];
  }

  /** Nested arrays of the values (handy in examples and tests). */
  async toArray(): Promise<unknown> {
    const d = await this.data();
    const build = (dim: number, off: number): unknown => {
      if (dim === this.shape.length) return d[off];
      const stride = shapeSize(this.shape.slice(dim + 1));
      return Array.from({ length: this.shape[dim] }, (_, i) => build(dim + 1, off + i * stride));
    };
    return build(0, 0);
  }

  /** A copy on `device` (a new leaf tensor; requiresGrad kept). */
  async to(device: Device): Promise<Tensor> {
    if (device === this.device) return this;
    device.checkDType(this.dtype, "to");
    const values = await this.data();
    const storage = allocating("to", this.shape, this.dtype, () => device.backend.upload(values, this.dtype));
    return new Tensor(storage, this.shape, this.dtype, device, this.requiresGrad);
  }

  /** Frees the device memory now; idempotent. Later use is a DeviceError. */
  dispose(): void {
    if (this.#storage === null) return void (this.#meta = false);
    reclaim.unregister(this);
    if (this.device.lostReason === null) this.device.backend.free(this.#storage);
    this.#storage = null;
    this._node = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Sets requiresGrad (leaves only) and returns this. */
  requiresGrad_(flag = true): this {
    if (!this.isLeaf) throw new AutogradError(`requiresGrad_: only leaf tensors can change requiresGrad`);
    this.requiresGrad = flag;
    return this;
  }

  /**
   * `Tensor([[1, 2], [3, 4]], shape=[2, 2], dtype=f32, device=cpu(CPU reference), requiresGrad=false)`:
   * values for CPU tensors (summarised past 1000 elements, as PyTorch does), none for tensors on a GPU
   * (reading those back is async: `await t.data()`).
   */
  toString(): string {
    let values: ArrayLike<number> | string | null = null;
    if (this.#meta) values = "meta";
    else if (this.#storage === null) values = "disposed";
    else if (
      this.device.kind === "cpu" && this.device.lostReason === null && this.size <= MAX_READ_FOR_PRINT
    ) {
      values = this.device.backend.readSync(this.#storage);
    }
    const { shape, dtype, requiresGrad } = this;
    return formatTensor({ shape, dtype, device: String(this.device), requiresGrad, values });
  }

  /** What Deno's console.log and Deno.inspect show: {@link toString}. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }

  /** What Node's (and Bun's) console.log and util.inspect show: {@link toString}. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }
}

function resolve(opts: TensorOptions | undefined, op: string): { device: Device; dtype: DType } {
  const device = opts?.device ?? currentDevice();
  if (!(device instanceof Device)) throw new ConfigError(`${op}: options.device is not a Device: ${device}`);
  const dtype = opts?.dtype ?? "f32";
  if (!isDType(dtype)) {
    throw new DTypeError(`${op}: unknown dtype ${JSON.stringify(dtype)} (use f32, f16 or f64)`);
  }
  device.checkDType(dtype, op);
  device.checkAlive(op);
  return { device, dtype };
}

/** @internal wraps fresh storage as a tensor; records `node` when grad mode is on and an input needs it. */
export function fromStorage(
  storage: Storage,
  shape: readonly number[],
  dtype: DType,
  device: Device,
  node?: GradNode<Tensor>,
): Tensor {
  const t = new Tensor(storage, shape, dtype, device, false);
  if (node !== undefined && isGradEnabled() && node.inputs.some((i) => i.requiresGrad)) {
    t.requiresGrad = true;
    t._node = node;
  }
  return t;
}

/**
 * @internal runs `alloc` (an upload or fill on a device), prefixing a DeviceError — a size limit, an
 * out-of-memory or lost device — with `op` and the tensor's shape, which the backend does not know.
 */
export function allocating<T>(op: string, shape: readonly number[], dtype: DType, alloc: () => T): T {
  try {
    return alloc();
  } catch (e) {
    if (e instanceof DeviceError) throw new DeviceError(`${op}: tensor [${shape}] (${dtype}): ${e.message}`);
    throw e;
  }
}

/** A tensor holding `data` (row-major) with the given shape. */
export function tensor(data: ArrayLike<number>, shape?: readonly number[], opts?: TensorOptions): Tensor {
  const s = shape ?? [data.length];
  checkShape(s, "tensor");
  if (shapeSize(s) !== data.length) {
    throw new ShapeError(`tensor: ${data.length} values do not fill shape [${s}] (${shapeSize(s)} elements)`);
  }
  const { device, dtype } = resolve(opts, "tensor");
  const storage = allocating("tensor", s, dtype, () => device.backend.upload(data, dtype));
  return new Tensor(storage, s, dtype, device, opts?.requiresGrad ?? false);
}

/** A tensor of `shape` filled with `value`. */
export function full(shape: readonly number[], value: number, opts?: TensorOptions): Tensor {
  return filled(shape, value, opts, "full");
}

/** full() under the name of the public call the user made, for its errors (`zeros`, `ones`, `full`). */
function filled(
  shape: readonly number[],
  value: number,
  opts: TensorOptions | undefined,
  op: string,
): Tensor {
  checkShape(shape, op);
  const { device, dtype } = resolve(opts, op);
  const storage = allocating(op, shape, dtype, () => device.backend.fill(shapeSize(shape), value, dtype));
  return new Tensor(storage, shape, dtype, device, opts?.requiresGrad);
}

/** Zeros. */
export function zeros(shape: readonly number[], opts?: TensorOptions): Tensor {
  return filled(shape, 0, opts, "zeros");
}

/** Ones. */
export function ones(shape: readonly number[], opts?: TensorOptions): Tensor {
  return filled(shape, 1, opts, "ones");
}

/** Options of the random constructors: `seed` makes the draw reproducible. */
export interface RandomOptions extends TensorOptions {
  seed?: number;
}

function randomTensor(
  shape: readonly number[],
  opts: RandomOptions | undefined,
  op: string,
  draw: (r: Rng) => number,
) {
  checkShape(shape, op);
  // The samples are drawn on the host (8 bytes each) first: check the device's budget before that
  // allocation, so an oversized draw is a DeviceError naming the shape, not a RangeError or an OOM kill.
  const device = opts?.device ?? currentDevice();
  const count = shapeSize(shape), limit = device.memoryLimit, live = device.memory().bytes;
  if ((limit !== null && live + count * 8 > limit) || count > 2 ** 31 - 1) {
    throw new DeviceError(
      `${op}: tensor [${shape}] draws ${count} samples, ${count * 8} bytes on the host with ${live} bytes ` +
        `live, past ${
          limit !== null && live + count * 8 > limit
            ? `this device's memory limit of ${limit} bytes (setMemoryLimit)`
            : "the largest array this runtime allocates"
        }`,
    );
  }
  const rng = new Rng(opts?.seed ?? Math.floor(Math.random() * 2 ** 32));
  const values = new Float64Array(count);
  for (let i = 0; i < values.length; i++) values[i] = draw(rng);
  return tensor(values, shape, opts);
}

/** Standard normal samples. */
export function randn(shape: readonly number[], opts?: RandomOptions): Tensor {
  return randomTensor(shape, opts, "randn", (r) => r.normal());
}

/** Uniform samples in [0, 1). */
export function rand(shape: readonly number[], opts?: RandomOptions): Tensor {
  return randomTensor(shape, opts, "rand", (r) => r.uniform());
}
