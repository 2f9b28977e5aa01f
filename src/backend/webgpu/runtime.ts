/**
 * GPU plumbing under the WebGPU backend: buffers and their pool, recording dispatches into one open
 * compute pass, uniforms, reads, and turning WebGPU's asynchronous errors into DeviceErrors.
 *
 * Ordering rules this module keeps (WebGPU runs queue operations in call order):
 * - dispatches are recorded into an open command encoder and submitted only when a read or sync needs
 *   them, or when a batch reaches {@link MAX_BATCH} dispatches;
 * - `queue.writeBuffer` runs before the open batch is submitted, so uploads only ever write buffers
 *   that the open batch does not use: a buffer freed while the open batch still uses it returns to the
 *   pool only after that batch is submitted;
 * - every dispatch's parameters get their own slot of one uniform buffer, written once right before the
 *   batch is submitted (queue order puts that write after all earlier batches finished reading it).
 * @module
 */
import { DeviceError } from "../../core/errors.ts";

/** Dispatches recorded before a batch is submitted without being asked to. */
export const MAX_BATCH = 256;

/** Bytes of freed buffers the pool keeps for reuse before destroying more. */
const POOL_CAP_BYTES = 1 << 30;

/**
 * WebGPU's flag values (fixed by the spec), spelled out because the GPUBufferUsage, GPUMapMode and
 * GPUShaderStage globals may be missing where the GPU object is injected (Node's `webgpu`, Bun), and
 * importing the library must work without any GPU at all.
 */
export const GPU_FLAGS = {
  MAP_READ: 0x0001,
  COPY_SRC: 0x0004,
  COPY_DST: 0x0008,
  UNIFORM: 0x0040,
  STORAGE: 0x0080,
  /** GPUMapMode.READ */
  MAP_MODE_READ: 0x0001,
  /** GPUShaderStage.COMPUTE */
  STAGE_COMPUTE: 0x0004,
} as const;

const STORAGE_USAGE = GPU_FLAGS.STORAGE | GPU_FLAGS.COPY_SRC | GPU_FLAGS.COPY_DST;

/** A compiled kernel: its pipeline and the layout its bind groups use (made by pipelines.ts). */
export interface CompiledKernel {
  /** The kernel record's name, for error messages. */
  readonly name: string;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
}

/** A device buffer and the batch that last used it. */
export class GpuBuffer {
  /** Id of the last batch that bound or copied this buffer. */
  lastBatch = -1;
  constructor(readonly gpu: GPUBuffer, readonly capacity: number) {}
}

/** A buffer range bound to a dispatch. */
export interface Binding {
  buf: GpuBuffer;
  /** Bytes bound from offset 0 (a multiple of 4). */
  bytes: number;
}

/** Workgroup counts of a dispatch. */
export type Grid = readonly [number, number, number];

/** Size class of a buffer: a 1, 1.25, 1.5 or 1.75 multiple of a power of two (≤ 25% slack). */
export function sizeClass(bytes: number): number {
  if (bytes <= 256) return 256;
  const step = 2 ** (Math.floor(Math.log2(bytes - 1)) - 2);
  return Math.ceil(bytes / step) * step;
}

/** Device limits the backend checks sizes against. */
export interface RuntimeLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupsPerDimension: number;
}

/** Owns a GPUDevice's queue, buffers and error reporting for one backend. */
export class GpuRuntime {
  readonly device: GPUDevice;
  readonly limits: RuntimeLimits;
  /** Why the device cannot be used any more, or null. */
  lostReason: string | null = null;

  readonly #pool = new Map<number, GPUBuffer[]>();
  #pooledBytes = 0;
  #pendingRelease: GpuBuffer[] = [];
  readonly #staging = new Map<number, GPUBuffer[]>();

  /** Id of the batch being recorded; bumped at every submit. */
  #batch = 0;
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #dispatches = 0;
  #scopesOpen = false;

  readonly #uniformSlot: number;
  readonly #uniforms: GPUBuffer;
  readonly #uniformData: Uint32Array;
  readonly #dummy: GPUBuffer;

  #error: DeviceError | null = null;
  #pendingChecks: Promise<void>[] = [];
  /** Description of the latest allocation, to name the culprit of an out-of-memory error. */
  #lastAlloc = "";

  constructor(device: GPUDevice) {
    this.device = device;
    const l = device.limits;
    this.limits = {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    };
    this.#uniformSlot = Math.max(256, l.minUniformBufferOffsetAlignment);
    this.#uniforms = device.createBuffer({
      label: "uniform slots",
      size: this.#uniformSlot * MAX_BATCH,
      usage: GPU_FLAGS.UNIFORM | GPU_FLAGS.COPY_DST,
    });
    this.#uniformData = new Uint32Array((this.#uniformSlot * MAX_BATCH) / 4);
    this.#dummy = device.createBuffer({ label: "unused binding", size: 16, usage: GPU_FLAGS.STORAGE });
    // Injected GPU objects (Node, Bun) may lack EventTarget; error scopes still catch our own errors.
    device.addEventListener?.("uncapturederror", (ev) => {
      this.reportError(`webgpu: ${(ev as GPUUncapturedErrorEvent).error.message}`);
    });
  }

  /** `groups` workgroups folded onto two grid dimensions (kernels index them row-major). */
  fold(groups: number): Grid {
    const max = this.limits.maxComputeWorkgroupsPerDimension;
    if (groups <= max) return [groups, 1, 1];
    return [max, Math.ceil(groups / max), 1];
  }

  /** Workgroups for `n` invocations in workgroups of `wgSize`, folded onto two grid dimensions. */
  grid1d(n: number, wgSize: number): Grid {
    return this.fold(Math.ceil(n / wgSize));
  }

  /** Throws a DeviceError naming `op` when the device is lost or destroyed. */
  checkAlive(op: string): void {
    if (this.lostReason !== null) {
      throw new DeviceError(`${op}: the WebGPU device is lost (${this.lostReason}); create a new one`);
    }
  }

  /** Marks the device unusable. */
  markLost(reason: string): void {
    this.lostReason ??= reason;
  }

  /** Records an asynchronous GPU error; the next read or sync throws it. */
  reportError(message: string): void {
    this.#error ??= new DeviceError(message);
  }

  /**
   * A buffer of at least `bytes` bytes (a multiple of 4) that no unsubmitted work uses.
   * @param what names the op and tensor for size-limit errors, e.g. "matmul: output [2, 3] (f32)"
   */
  alloc(bytes: number, what: string): GpuBuffer {
    const lim = this.limits;
    if (bytes > lim.maxStorageBufferBindingSize || bytes > lim.maxBufferSize) {
      const [name, limit] = bytes > lim.maxStorageBufferBindingSize
        ? ["maxStorageBufferBindingSize", lim.maxStorageBufferBindingSize]
        : ["maxBufferSize", lim.maxBufferSize];
      throw new DeviceError(
        `${what} needs ${bytes} bytes, more than this adapter's ${name} (${limit} bytes)`,
      );
    }
    let capacity = sizeClass(bytes);
    if (capacity > lim.maxStorageBufferBindingSize || capacity > lim.maxBufferSize) capacity = bytes;
    const free = this.#pool.get(capacity);
    if (free !== undefined && free.length > 0) {
      this.#pooledBytes -= capacity;
      return new GpuBuffer(free.pop()!, capacity);
    }
    this.#lastAlloc = `${what} (${capacity} bytes)`;
    this.#openScopes();
    return new GpuBuffer(this.device.createBuffer({ size: capacity, usage: STORAGE_USAGE }), capacity);
  }

  /** Gives a buffer back: to the pool now, or once the batch that uses it is submitted. */
  release(buf: GpuBuffer): void {
    if (this.lostReason !== null) return;
    if (buf.lastBatch === this.#batch) this.#pendingRelease.push(buf);
    else this.#toPool(buf);
  }

  #toPool(buf: GpuBuffer): void {
    if (this.#pooledBytes + buf.capacity > POOL_CAP_BYTES) {
      buf.gpu.destroy();
      return;
    }
    const list = this.#pool.get(buf.capacity);
    if (list === undefined) this.#pool.set(buf.capacity, [buf.gpu]);
    else list.push(buf.gpu);
    this.#pooledBytes += buf.capacity;
  }

  /** Copies host bytes into a buffer that no unsubmitted work uses (fresh from {@link alloc}). */
  write(buf: GpuBuffer, data: ArrayBufferView): void {
    if (data.byteLength > 0) {
      this.device.queue.writeBuffer(buf.gpu, 0, data.buffer, data.byteOffset, data.byteLength);
    }
  }

  /**
   * Records one dispatch of `kernel` into the open batch.
   * @param params the uniform block as 32-bit words (floats as their bit patterns)
   * @param bindings storage bindings 1, 2, ... in kernel order; null binds a dummy buffer
   */
  dispatch(
    kernel: CompiledKernel,
    params: readonly number[],
    bindings: readonly (Binding | null)[],
    grid: Grid,
  ): void {
    const maxDim = this.limits.maxComputeWorkgroupsPerDimension;
    if (grid.some((g) => g > maxDim)) {
      throw new DeviceError(
        `${kernel.name}: grid [${grid}] exceeds maxComputeWorkgroupsPerDimension (${maxDim})`,
      );
    }
    if (grid.some((g) => g === 0)) return;
    const slotWords = this.#uniformSlot / 4;
    const slot = this.#dispatches;
    this.#uniformData.fill(0, slot * slotWords, (slot + 1) * slotWords);
    this.#uniformData.set(params, slot * slotWords);
    const entries: GPUBindGroupEntry[] = [
      {
        binding: 0,
        resource: { buffer: this.#uniforms, offset: slot * this.#uniformSlot, size: this.#uniformSlot },
      },
    ];
    bindings.forEach((b, i) => {
      if (b === null) {
        entries.push({ binding: i + 1, resource: { buffer: this.#dummy } });
      } else {
        b.buf.lastBatch = this.#batch;
        entries.push({
          binding: i + 1,
          resource: { buffer: b.buf.gpu, offset: 0, size: Math.max(4, b.bytes) },
        });
      }
    });
    const pass = this.#openPass();
    pass.setPipeline(kernel.pipeline);
    pass.setBindGroup(0, this.device.createBindGroup({ layout: kernel.layout, entries }));
    pass.dispatchWorkgroups(grid[0], grid[1], grid[2]);
    this.#dispatches++;
    if (this.#dispatches >= MAX_BATCH) this.flush();
  }

  /**
   * Records a buffer-to-buffer copy into the open batch (between its compute passes), for packing many
   * tensors into one (the multi-tensor optimizer): no pipeline, bind group or uniform slot.
   * Offsets and `bytes` are multiples of 4.
   */
  copy(src: GpuBuffer, srcOffset: number, dst: GpuBuffer, dstOffset: number, bytes: number): void {
    if (bytes === 0) return;
    const encoder = this.#openEncoder();
    if (this.#pass !== null) {
      this.#pass.end();
      this.#pass = null;
    }
    src.lastBatch = this.#batch;
    dst.lastBatch = this.#batch;
    encoder.copyBufferToBuffer(src.gpu, srcOffset, dst.gpu, dstOffset, bytes);
  }

  #openScopes(): void {
    if (this.#scopesOpen) return;
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    this.#scopesOpen = true;
  }

  #openEncoder(): GPUCommandEncoder {
    this.#openScopes();
    this.#encoder ??= this.device.createCommandEncoder();
    return this.#encoder;
  }

  #openPass(): GPUComputePassEncoder {
    this.#pass ??= this.#openEncoder().beginComputePass();
    return this.#pass;
  }

  /** Submits the open batch (if any) and returns the buffers it freed to the pool. */
  flush(): void {
    if (this.#pass !== null) {
      this.#pass.end();
      this.#pass = null;
    }
    if (this.#encoder !== null) {
      const commands = this.#encoder.finish();
      this.#encoder = null;
      if (this.#dispatches > 0) {
        const words = this.#dispatches * (this.#uniformSlot / 4);
        this.device.queue.writeBuffer(this.#uniforms, 0, this.#uniformData.buffer, 0, words * 4);
      }
      this.device.queue.submit([commands]);
    }
    if (this.#scopesOpen) {
      this.#scopesOpen = false;
      const culprit = this.#lastAlloc;
      const validation = this.device.popErrorScope();
      const oom = this.device.popErrorScope();
      this.#pendingChecks.push(
        validation.then((e) => {
          if (e) this.reportError(`webgpu: a kernel launch failed validation: ${e.message}`);
        }, () => {}),
        oom.then((e) => {
          if (e) this.reportError(`webgpu: out of memory allocating ${culprit}: ${e.message}`);
        }, () => {}),
      );
    }
    this.#batch++;
    this.#dispatches = 0;
    const released = this.#pendingRelease;
    this.#pendingRelease = [];
    for (const b of released) this.#toPool(b);
  }

  /** Waits for the error reports of submitted batches; throws the first error seen. */
  async #throwErrors(op: string): Promise<void> {
    const checks = this.#pendingChecks;
    this.#pendingChecks = [];
    await Promise.all(checks);
    const e = this.#error;
    if (e !== null) {
      this.#error = null;
      throw new DeviceError(`${op}: an earlier GPU operation failed, so results may be wrong: ${e.message}`);
    }
  }

  /** Copies the first `bytes` bytes of `buf` to the host (submits all recorded work first). */
  async read(buf: GpuBuffer, bytes: number, op = "read"): Promise<ArrayBuffer> {
    this.checkAlive(op);
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const capacity = Math.min(sizeClass(size), Math.max(size, this.limits.maxBufferSize));
    const staging = this.#staging.get(capacity)?.pop() ??
      this.device.createBuffer({ size: capacity, usage: GPU_FLAGS.MAP_READ | GPU_FLAGS.COPY_DST });
    const encoder = this.#openEncoder();
    if (this.#pass !== null) {
      this.#pass.end();
      this.#pass = null;
    }
    buf.lastBatch = this.#batch;
    encoder.copyBufferToBuffer(buf.gpu, 0, staging, 0, size);
    this.flush();
    try {
      await staging.mapAsync(GPU_FLAGS.MAP_MODE_READ, 0, size);
    } catch (e) {
      this.checkAlive(op);
      throw new DeviceError(
        `${op}: reading ${bytes} bytes back from the GPU failed: ${(e as Error).message}`,
      );
    }
    const out = staging.getMappedRange(0, size).slice(0, bytes);
    staging.unmap();
    const list = this.#staging.get(capacity);
    if (list === undefined) this.#staging.set(capacity, [staging]);
    else list.push(staging);
    await this.#throwErrors(op);
    return out;
  }

  /** Submits recorded work and waits until the GPU finished it. */
  async sync(): Promise<void> {
    this.checkAlive("sync");
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.checkAlive("sync");
    await this.#throwErrors("sync");
  }

  /** Destroys the device and with it every buffer. */
  destroy(): void {
    this.markLost("destroyed by the caller");
    this.#pool.clear();
    this.#staging.clear();
    this.#pendingRelease = [];
    this.#encoder = null;
    this.#pass = null;
    this.device.destroy();
  }
}
