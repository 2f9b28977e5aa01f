/**
 * GPU plumbing under the WebGPU backend: buffers and their pool, recording dispatches into one open
 * compute pass, uniforms, reads, and turning WebGPU's asynchronous errors into DeviceErrors.
 *
 * Ordering rules this module keeps (WebGPU runs queue operations in call order):
 * - dispatches are recorded into an open command encoder and submitted only when a read or sync needs
 *   them, or when a batch reaches {@link MAX_BATCH} dispatches;
 * - `queue.writeBuffer` runs before the open batch is submitted, so an upload must not write a buffer
 *   that the open batch uses: uploads take pooled buffers the open batch has not touched
 *   ({@link GpuRuntime.alloc}'s `forUpload`), and {@link GpuRuntime.write} submits the batch first when
 *   it gets one it has. Kernel outputs may take a buffer freed earlier in the same batch: dispatches and
 *   copies run in recording order, each seeing the earlier ones' writes;
 * - a buffer is destroyed only when no unsubmitted command uses it (destroying it before the submit
 *   would make the submit fail);
 * - every dispatch's parameters get their own slot of one uniform buffer, written once right before the
 *   batch is submitted (queue order puts that write after all earlier batches finished reading it).
 *
 * The host cost of a dispatch is what limits small batches, so the hot path allocates nothing: the uniform
 * slot is a dynamic offset into one bind-group entry, so a bind group depends only on the buffers bound
 * and is cached per layout in a tree keyed by buffer ids (pooled buffers come back with the same id, so a
 * training step's bind groups are all hits from the second step on); storage is bound whole (no kernel
 * reads `arrayLength`), so the bound size is never part of the key; and buffer wrappers are pooled with
 * their GPUBuffer.
 * @module
 */
import { DeviceError } from "../../core/errors.ts";

/** Dispatches recorded before a batch is submitted without being asked to. */
export const MAX_BATCH = 256;

/**
 * Bytes of freed buffers the pool keeps at least. Above this floor it keeps as much as the largest
 * working set seen so far ({@link GpuRuntime.peakInUseBytes}): a training step frees and re-allocates the
 * same multi-gigabyte activations every step, and destroying them would make the next step allocate
 * them again. A memory limit on the device trims the pool first ({@link GpuRuntime.trimPool}).
 */
const POOL_FLOOR_BYTES = 1 << 30;

/** Cached bind groups before the cache is dropped and rebuilt (bounds it for ever-changing workloads). */
const BIND_CACHE_MAX = 1 << 16;

/**
 * WebGPU's flag values (fixed by the spec), spelled out because the GPUBufferUsage, GPUMapMode and
 * GPUShaderStage globals may be missing where the GPU object is injected (Node's `webgpu`, Bun), and
 * importing the library must work without any GPU at all.
 */
export const GPU_FLAGS = {
  MAP_READ: 0x0001,
  QUERY_RESOLVE: 0x0200,
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

let nextBufferId = 1;

/** A device buffer and the batch that last used it (pooled together with its GPUBuffer). */
export class GpuBuffer {
  /** Id of the last batch that bound or copied this buffer. */
  lastBatch = -1;
  /** When it was last given back to the pool (a counter): the pool evicts the longest-pooled first. */
  pooledAt = 0;
  /** Unique per GPUBuffer: the bind-group cache's key (0 is the dummy binding). */
  readonly id = nextBufferId++;
  constructor(readonly gpu: GPUBuffer, readonly capacity: number) {}
  /** A buffer is its own whole-buffer {@link Binding}, so binding it allocates nothing. */
  get buf(): GpuBuffer {
    return this;
  }
  get bytes(): number {
    return this.capacity;
  }
}

/** One level of the bind-group cache: buffer id → next level, or → the bind group at the last level. */
type BindNode = Map<number, BindNode | GPUBindGroup>;

/** A timestamped dispatch's kernel name and its slot in the batch's query set (profiling only). */
interface TimedBatch {
  names: string[];
  read: GPUBuffer;
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

  readonly #pool = new Map<number, GpuBuffer[]>();
  #pooledBytes = 0;
  /** Counter stamped on buffers as they are pooled ({@link GpuBuffer.pooledAt}). */
  #poolClock = 0;
  /** Bytes of freed buffers the pool keeps at least ({@link POOL_FLOOR_BYTES}; tests lower it). */
  poolFloorBytes = POOL_FLOOR_BYTES;
  /** Capacity of buffers handed out and not yet pooled or destroyed, and its high-water mark. */
  #inUseBytes = 0;
  #peakInUseBytes = 0;
  readonly #bindCache = new Map<GPUBindGroupLayout, BindNode>();
  #bindCacheSize = 0;
  #bindGroupsMade = 0;
  #lastPipeline: GPUComputePipeline | null = null;
  readonly #dynOffset = new Uint32Array(1);
  /** Per-kernel GPU times while profiling (null otherwise), and the batches whose times are pending. */
  #profile: Map<string, { calls: number; ns: number }> | null = null;
  #profileDetail = false;
  #querySet: GPUQuerySet | null = null;
  #queryResolve: GPUBuffer | null = null;
  #timedNames: string[] = [];
  #timedReads: Promise<void>[] = [];
  /** Buffers to destroy once the open batch, which uses them, is submitted. */
  #pendingDestroy: GpuBuffer[] = [];
  readonly #staging = new Map<number, GPUBuffer[]>();

  /**
   * Record every dispatch in a compute pass of its own (as a timed profile does) instead of one pass per
   * batch: a knob for measuring what WebGPU implementations do with long passes (bench/dawn_queue_probe.ts).
   */
  passPerDispatch = false;

  /**
   * How an await of GPU work lets the WebGPU implementation poll ({@link settle}). `throttle` (the
   * default) hands callbacks that native code (a WebGPU addon such as Dawn's `dawn.node`) schedules with
   * the global `setImmediate` to a zero-delay timer while the await lasts ({@link throttleNativeImmediates});
   * `plain` leaves the host alone; `wake` keeps a 1 ms timer running. On the H200, Deno + Dawn stalled
   * 1-4.5 s in 7 of 24 awaits with `plain` and 7 of 24 with `wake`, none of 24 with `throttle`
   * (bench/dawn_queue_probe.ts, bench/NOTES.md "The Dawn stalls"). Where nothing native calls
   * setImmediate (Deno's own WebGPU, browsers) the modes behave alike.
   */
  pollMode: "plain" | "throttle" | "wake" = "throttle";

  /** Id of the batch being recorded; bumped at every submit. */
  #batch = 0;
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #dispatches = 0;
  #scopesOpen = false;

  readonly #uniformSlot: number;
  readonly #uniforms: GPUBuffer;
  readonly #uniformData: Uint32Array;
  readonly #dummy: GpuBuffer;

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
    this.#dummy = new GpuBuffer(
      device.createBuffer({ label: "unused binding", size: 16, usage: GPU_FLAGS.STORAGE }),
      16,
    );
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
   * A buffer of at least `bytes` bytes (a multiple of 4), pooled when one is free: for a kernel's output
   * possibly one that the open batch used before (its earlier dispatches run first); with `forUpload`
   * one that the open batch has not used, so {@link write} can fill it without submitting.
   * @param what names the op and tensor for size-limit errors, e.g. "matmul: output [2, 3] (f32)"
   */
  alloc(bytes: number, what: string, forUpload = false): GpuBuffer {
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
    this.#inUseBytes += capacity;
    if (this.#inUseBytes > this.#peakInUseBytes) this.#peakInUseBytes = this.#inUseBytes;
    const free = this.#pool.get(capacity);
    if (free !== undefined && free.length > 0) {
      if (!forUpload) {
        this.#pooledBytes -= capacity;
        return free.pop()!;
      }
      // The lowest id the open batch has not used (the list is sorted by id, descending).
      for (let i = free.length - 1; i >= 0; i--) {
        if (free[i].lastBatch !== this.#batch) {
          this.#pooledBytes -= capacity;
          return free.splice(i, 1)[0];
        }
      }
    }
    this.#lastAlloc = `${what} (${capacity} bytes)`;
    this.#openScopes();
    return new GpuBuffer(this.device.createBuffer({ size: capacity, usage: STORAGE_USAGE }), capacity);
  }

  /** The pool's buffer size for a request of `bytes` (what {@link alloc} would take from it). */
  capacityFor(bytes: number): number {
    const lim = this.limits;
    const capacity = sizeClass(bytes);
    return capacity > lim.maxStorageBufferBindingSize || capacity > lim.maxBufferSize ? bytes : capacity;
  }

  /** Bytes of freed buffers kept for reuse. */
  get pooledBytes(): number {
    return this.#pooledBytes;
  }

  /** Bytes of buffers handed out (tensors, scratch and in-flight temporaries), rounded to pool sizes. */
  get inUseBytes(): number {
    return this.#inUseBytes;
  }

  /** High-water mark of {@link inUseBytes}: how large the pool may grow. */
  get peakInUseBytes(): number {
    return this.#peakInUseBytes;
  }

  /** Destroys pooled buffers, largest first, until at most `keepBytes` stay pooled. */
  trimPool(keepBytes: number): void {
    if (this.#pooledBytes <= keepBytes) return;
    this.flush(); // pooled buffers the open batch binds may be destroyed only after its submit
    const sizes = [...this.#pool.keys()].sort((a, b) => b - a);
    for (const size of sizes) {
      const list = this.#pool.get(size)!;
      while (list.length > 0 && this.#pooledBytes > keepBytes) {
        list.pop()!.gpu.destroy();
        this.#pooledBytes -= size;
      }
      if (list.length === 0) this.#pool.delete(size);
      if (this.#pooledBytes <= keepBytes) break;
    }
    this.#dropBindGroups();
  }

  /** Destroys `buf` now, or after the open batch's submit when that batch binds it. */
  #destroy(buf: GpuBuffer): void {
    if (buf.lastBatch === this.#batch) this.#pendingDestroy.push(buf);
    else buf.gpu.destroy();
  }

  /**
   * Destroys pooled buffers, the longest-pooled first whatever their size, until `bytes` are freed (or the
   * pool is empty). Why: the buffer being given back belongs to the current working set, the oldest pooled
   * ones to an earlier one. Keeping the old ones instead (as the pool once did) made every step of a new
   * working set of other sizes create and destroy its buffers: lora_bench's f16 steps after its f32 ones
   * ran 1.4-2.3x slower than the same steps in a fresh process on the H200 (bench/NOTES.md, issue 15).
   */
  #evictOldest(bytes: number): void {
    const all: GpuBuffer[] = [];
    for (const list of this.#pool.values()) all.push(...list);
    if (all.length === 0) return;
    all.sort((a, b) => a.pooledAt - b.pooledAt);
    const doomed = new Set<GpuBuffer>();
    let freed = 0;
    for (const b of all) {
      if (freed >= bytes) break;
      doomed.add(b);
      freed += b.capacity;
    }
    for (const [size, list] of this.#pool) {
      const kept = list.filter((b) => !doomed.has(b));
      if (kept.length === list.length) continue;
      if (kept.length === 0) this.#pool.delete(size);
      else this.#pool.set(size, kept);
    }
    for (const b of doomed) this.#destroy(b);
    this.#pooledBytes -= freed;
    this.#dropBindGroups();
  }

  /** Forgets every cached bind group (some name a destroyed buffer, or the cache is full). */
  #dropBindGroups(): void {
    this.#bindCache.clear();
    this.#bindCacheSize = 0;
  }

  /** Gives a buffer back to the pool (reusable by later dispatches of the open batch at once). */
  release(buf: GpuBuffer): void {
    if (this.lostReason !== null) return;
    this.#inUseBytes -= buf.capacity;
    this.#toPool(buf);
  }

  #toPool(buf: GpuBuffer): void {
    const limit = Math.max(this.poolFloorBytes, this.#peakInUseBytes);
    if (this.#pooledBytes + buf.capacity > limit) this.#evictOldest(this.#pooledBytes + buf.capacity - limit);
    if (this.#pooledBytes + buf.capacity > limit) {
      this.#destroy(buf);
      this.#dropBindGroups();
      return;
    }
    buf.pooledAt = ++this.#poolClock;
    const list = this.#pool.get(buf.capacity);
    if (list === undefined) this.#pool.set(buf.capacity, [buf]);
    else {
      // Kept sorted by id, descending, so alloc takes the lowest id free: which buffer an allocation gets
      // then depends only on which buffers are free, not on the order they were freed in. A training step
      // frees its temporaries in another order than it took them; with a plain stack every step would
      // bind other buffer combinations and miss the bind-group cache.
      let lo = 0, hi = list.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (list[mid].id > buf.id) lo = mid + 1;
        else hi = mid;
      }
      if (lo === list.length) list.push(buf);
      else list.splice(lo, 0, buf);
    }
    this.#pooledBytes += buf.capacity;
  }

  /**
   * Copies host bytes into a buffer fresh from {@link alloc} (with `forUpload`), at `byteOffset` (a
   * multiple of 4, as the byte length; streamed uploads write one piece at a time). Should the open batch
   * use the buffer, it is submitted first: queue writes run before unsubmitted work.
   */
  write(buf: GpuBuffer, data: ArrayBufferView, byteOffset = 0): void {
    if (data.byteLength > 0) {
      if (buf.lastBatch === this.#batch) this.flush();
      this.device.queue.writeBuffer(buf.gpu, byteOffset, data.buffer, data.byteOffset, data.byteLength);
    }
  }

  /**
   * Records one dispatch of `kernel` into the open batch. Allocates nothing once the bind group of these
   * buffers is cached.
   * @param params the uniform block as 32-bit words (floats as their bit patterns)
   * @param bindings storage bindings 1, 2, ... in kernel order; null binds a dummy buffer. Each buffer is
   *   bound whole (`bytes` is not used for the binding).
   */
  dispatch(
    kernel: CompiledKernel,
    params: ArrayLike<number>,
    bindings: readonly (Binding | null)[],
    grid: Grid,
    detail?: string,
  ): void {
    const maxDim = this.limits.maxComputeWorkgroupsPerDimension;
    if (grid[0] > maxDim || grid[1] > maxDim || grid[2] > maxDim) {
      throw new DeviceError(
        `${kernel.name}: grid [${grid}] exceeds maxComputeWorkgroupsPerDimension (${maxDim})`,
      );
    }
    if (grid[0] === 0 || grid[1] === 0 || grid[2] === 0) return;
    // Without timestamp-query a profile gets each kernel's host (recording) time instead.
    const hostT0 = this.#profile !== null && this.#querySet === null ? performance.now() : 0;
    // A detailed profile keys rows by kernel and shape (the caller's detail, else the grid).
    const rowName = this.#profileDetail
      ? `${kernel.name} ${detail ?? `grid ${grid.join("x")}`}`
      : kernel.name;
    const slotWords = this.#uniformSlot / 4;
    const slot = this.#dispatches;
    const base = slot * slotWords;
    this.#uniformData.fill(0, base, base + slotWords);
    this.#uniformData.set(params, base);
    const group = this.#bindGroup(kernel.layout, bindings);
    for (let i = 0; i < bindings.length; i++) {
      const b = bindings[i];
      if (b !== null) b.buf.lastBatch = this.#batch;
    }
    let pass: GPUComputePassEncoder;
    if (this.#profile !== null && this.#querySet !== null) {
      // One pass per dispatch, so its begin and end timestamps time this kernel alone.
      if (this.#pass !== null) this.#pass.end();
      const q = this.#timedNames.length * 2;
      this.#timedNames.push(rowName);
      pass = this.#openEncoder().beginComputePass({
        timestampWrites: {
          querySet: this.#querySet,
          beginningOfPassWriteIndex: q,
          endOfPassWriteIndex: q + 1,
        },
      });
      this.#pass = pass;
      this.#lastPipeline = null;
    } else {
      if (this.passPerDispatch && this.#pass !== null) {
        this.#pass.end();
        this.#pass = null;
      }
      pass = this.#openPass();
    }
    if (this.#lastPipeline !== kernel.pipeline) {
      pass.setPipeline(kernel.pipeline);
      this.#lastPipeline = kernel.pipeline;
    }
    this.#dynOffset[0] = slot * this.#uniformSlot;
    pass.setBindGroup(0, group, this.#dynOffset, 0, 1);
    pass.dispatchWorkgroups(grid[0], grid[1], grid[2]);
    if (this.#profile !== null && this.#querySet === null) {
      const row = this.#profile.get(rowName);
      const ns = (performance.now() - hostT0) * 1e6;
      if (row === undefined) this.#profile.set(rowName, { calls: 1, ns });
      else {
        row.calls++;
        row.ns += ns;
      }
    }
    this.#dispatches++;
    if (this.#dispatches >= MAX_BATCH) this.flush();
  }

  /** The bind group of `bindings` under `layout`: from the cache, or made once and cached. */
  #bindGroup(layout: GPUBindGroupLayout, bindings: readonly (Binding | null)[]): GPUBindGroup {
    let node = this.#bindCache.get(layout);
    if (node === undefined) {
      node = new Map();
      this.#bindCache.set(layout, node);
    }
    const last = bindings.length - 1;
    if (last < 0) return this.#makeBindGroup(layout, bindings, node, 0);
    for (let i = 0; i < last; i++) {
      const id = bindings[i]?.buf.id ?? 0;
      let next = node.get(id) as BindNode | undefined;
      if (next === undefined) {
        next = new Map();
        node.set(id, next);
      }
      node = next;
    }
    const id = bindings[last]?.buf.id ?? 0;
    return (node.get(id) as GPUBindGroup | undefined) ?? this.#makeBindGroup(layout, bindings, node, id);
  }

  #makeBindGroup(
    layout: GPUBindGroupLayout,
    bindings: readonly (Binding | null)[],
    leaf: BindNode,
    id: number,
  ): GPUBindGroup {
    if (this.#bindCacheSize >= BIND_CACHE_MAX) this.#dropBindGroups();
    const entries: GPUBindGroupEntry[] = [
      { binding: 0, resource: { buffer: this.#uniforms, offset: 0, size: this.#uniformSlot } },
    ];
    bindings.forEach((b, i) => {
      const buf = b === null ? this.#dummy : b.buf;
      entries.push({ binding: i + 1, resource: { buffer: buf.gpu, offset: 0, size: buf.capacity } });
    });
    const group = this.device.createBindGroup({ layout, entries });
    // After a drop the leaf may belong to the old tree; caching there is harmless (it is unreachable).
    leaf.set(id, group);
    this.#bindCacheSize++;
    this.#bindGroupsMade++;
    return group;
  }

  /** Bind groups created so far (cache misses), for measuring the cache. */
  get bindGroupsMade(): number {
    return this.#bindGroupsMade;
  }

  /** Number of cached bind groups (for tests of the cache). */
  get bindGroupCount(): number {
    return this.#bindCacheSize;
  }

  /**
   * Starts timing kernels: with `timestamp-query`, every dispatch runs in a pass of its own whose GPU
   * timestamps are read back per batch; without it, dispatches are only counted. Ends with
   * {@link endProfile}. With `detail`, rows are kept per kernel and shape instead of per kernel.
   */
  beginProfile(detail = false): void {
    this.flush();
    this.#profile = new Map();
    this.#profileDetail = detail;
    if (this.device.features.has("timestamp-query")) {
      this.#querySet ??= this.device.createQuerySet({ type: "timestamp", count: 2 * MAX_BATCH });
      this.#queryResolve ??= this.device.createBuffer({
        label: "timestamps",
        size: 16 * MAX_BATCH,
        usage: GPU_FLAGS.QUERY_RESOLVE | GPU_FLAGS.COPY_SRC,
      });
    }
  }

  /** Whether a detailed profile (rows per kernel and shape) is running: callers then pass shape details. */
  get profilingDetail(): boolean {
    return this.#profile !== null && this.#profileDetail;
  }

  /** Whether kernels are timed on the GPU (timestamp-query) while profiling. */
  get timestamps(): boolean {
    return this.device.features.has("timestamp-query");
  }

  /**
   * Ends profiling; per kernel name, the calls and milliseconds: GPU time with timestamp-query, else the
   * host time spent recording the dispatches.
   */
  async endProfile(): Promise<{ name: string; calls: number; ms: number }[]> {
    this.flush();
    await this.settle(Promise.all(this.#timedReads));
    this.#timedReads = [];
    const rows = [...(this.#profile ?? new Map()).entries()].map(([name, r]) => ({
      name,
      calls: r.calls,
      ms: r.ns / 1e6,
    }));
    this.#profile = null;
    this.#profileDetail = false;
    return rows;
  }

  /** At a submit while timing: resolves this batch's timestamps and reads them back asynchronously. */
  #resolveTimestamps(encoder: GPUCommandEncoder): TimedBatch | null {
    const n = this.#timedNames.length;
    if (this.#profile === null || this.#querySet === null || n === 0) return null;
    const read = this.device.createBuffer({
      size: 16 * n,
      usage: GPU_FLAGS.MAP_READ | GPU_FLAGS.COPY_DST,
    });
    encoder.resolveQuerySet(this.#querySet, 0, 2 * n, this.#queryResolve!, 0);
    encoder.copyBufferToBuffer(this.#queryResolve!, 0, read, 0, 16 * n);
    const names = this.#timedNames;
    this.#timedNames = [];
    return { names, read };
  }

  #collectTimestamps(batch: TimedBatch): void {
    const profile = this.#profile!;
    this.#timedReads.push(
      batch.read.mapAsync(GPU_FLAGS.MAP_MODE_READ).then(() => {
        const t = new BigUint64Array(batch.read.getMappedRange());
        batch.names.forEach((name, i) => {
          const ns = t[2 * i + 1] > t[2 * i] ? Number(t[2 * i + 1] - t[2 * i]) : 0;
          const row = profile.get(name);
          if (row === undefined) profile.set(name, { calls: 1, ns });
          else {
            row.calls++;
            row.ns += ns;
          }
        });
        batch.read.unmap();
        batch.read.destroy();
      }, () => batch.read.destroy()),
    );
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
    if (this.#pass === null) {
      this.#pass = this.#openEncoder().beginComputePass();
      this.#lastPipeline = null;
    }
    return this.#pass;
  }

  /** Submits the open batch (if any) and returns the buffers it freed to the pool. */
  flush(): void {
    if (this.#pass !== null) {
      this.#pass.end();
      this.#pass = null;
    }
    if (this.#encoder !== null) {
      const timed = this.#resolveTimestamps(this.#encoder);
      const commands = this.#encoder.finish();
      this.#encoder = null;
      if (this.#dispatches > 0) {
        const words = this.#dispatches * (this.#uniformSlot / 4);
        this.device.queue.writeBuffer(this.#uniforms, 0, this.#uniformData.buffer, 0, words * 4);
      }
      this.device.queue.submit([commands]);
      if (timed !== null) this.#collectTimestamps(timed);
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
    const doomed = this.#pendingDestroy;
    this.#pendingDestroy = [];
    for (const b of doomed) b.gpu.destroy();
  }

  /** `promise`, awaited under {@link pollMode}. */
  settle<T>(promise: Promise<T>): Promise<T> {
    if (this.pollMode === "plain") return promise;
    if (this.pollMode === "wake") {
      const timer = setInterval(() => {}, 1);
      return promise.finally(() => clearInterval(timer));
    }
    const release = throttleNativeImmediates();
    return promise.finally(release);
  }

  /** Waits for the error reports of submitted batches; throws the first error seen. */
  async #throwErrors(op: string): Promise<void> {
    const checks = this.#pendingChecks;
    this.#pendingChecks = [];
    await this.settle(Promise.all(checks));
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
      await this.settle(staging.mapAsync(GPU_FLAGS.MAP_MODE_READ, 0, size));
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

  /**
   * Submits the work recorded so far and returns a promise of its completion, without holding up what is
   * recorded next: later work is neither waited for nor delayed. A caller that records its next batch
   * before awaiting this one's promise keeps the GPU busy through the wait, which in Deno costs about
   * 11 ms (bench/lora_bench.ts times steady-state throughput this way, as CUDA events do for PyTorch).
   * Rejects, as {@link sync} does, when the device is lost or submitted work failed.
   */
  submitted(): Promise<void> {
    return this.#done("submitted");
  }

  /** Submits recorded work and waits until the GPU finished it. */
  sync(): Promise<void> {
    return this.#done("sync");
  }

  /** Submits the recorded work; resolves once the GPU finished it (errors name `op`). */
  async #done(op: string): Promise<void> {
    this.checkAlive(op);
    this.flush();
    await this.settle(this.device.queue.onSubmittedWorkDone());
    this.checkAlive(op);
    await this.#throwErrors(op);
  }

  /** Destroys the device and with it every buffer. */
  destroy(): void {
    this.markLost("destroyed by the caller");
    this.#pool.clear();
    this.#staging.clear();
    this.#pendingDestroy = [];
    this.#encoder = null;
    this.#pass = null;
    this.device.destroy();
  }
}

/** The host's setImmediate as it was before {@link throttleNativeImmediates} replaced it, and the awaits using it. */
let immediateOriginal: ((cb: (...args: unknown[]) => void, ...args: unknown[]) => unknown) | null = null;
let immediateUsers = 0;

/** Whether `f` is native code (a function an addon made), not JavaScript. */
const isNative = (f: unknown) =>
  typeof f === "function" && Function.prototype.toString.call(f).includes("[native code]");

/**
 * Until the returned function is called, callbacks that native code schedules with the global
 * `setImmediate` run from a zero-delay timer instead; JavaScript callers keep the real setImmediate
 * (a bound function also reads as native, and takes the timer too: the same callback, a turn later).
 * Why: Dawn's Node addon polls for finished GPU work by rescheduling itself with setImmediate as fast
 * as the event loop turns; under Deno that spin held queued work back for 1-4 s at a time on the H200,
 * the GPU idle meanwhile (bench/NOTES.md, "The Dawn stalls"). Nested calls share one replacement; the
 * original comes back when the last one is released. A host without setImmediate (a browser) is left
 * alone.
 */
export function throttleNativeImmediates(): () => void {
  const g = globalThis as unknown as { setImmediate?: typeof immediateOriginal };
  if (typeof g.setImmediate !== "function") return () => {};
  if (immediateUsers++ === 0) {
    const original = g.setImmediate!;
    immediateOriginal = original;
    g.setImmediate = (cb, ...args) => isNative(cb) ? setTimeout(cb, 0, ...args) : original(cb, ...args);
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--immediateUsers === 0 && immediateOriginal !== null) {
      g.setImmediate = immediateOriginal;
      immediateOriginal = null;
    }
  };
}
