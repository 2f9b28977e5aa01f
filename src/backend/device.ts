/**
 * Devices: a backend plus identity. Tensors remember their device; ops check that all operands share
 * one. The CPU reference device always exists; WebGPU devices come from `webgpuDevice()`.
 * @module
 */
import type { Backend, MemoryStats } from "./backend.ts";
import { createCpuBackend } from "./cpu/cpu_backend.ts";
import type { DType } from "../core/dtype.ts";
import { ConfigError, DeviceError, DTypeError } from "../core/errors.ts";
import { showValue } from "../core/options.ts";

/** A place where tensors live and kernels run. */
export class Device {
  #lostReason: string | null = null;

  /**
   * @param backend the kernels
   * @param kind "cpu" or "webgpu"
   * @param name a short human-readable description, e.g. the GPU adapter's name
   * @param isSoftware true for software GPU adapters (llvmpipe, lavapipe, SwiftShader)
   */
  constructor(
    readonly backend: Backend,
    readonly kind: "cpu" | "webgpu",
    readonly name: string,
    readonly isSoftware = false,
  ) {}

  /** Whether tensors of `dtype` can live on this device. */
  supportsDType(dtype: DType): boolean {
    return this.backend.supportsDType(dtype);
  }

  /** Throws a DTypeError naming `op` when this device cannot hold `dtype`. */
  checkDType(dtype: DType, op: string): void {
    if (!this.supportsDType(dtype)) {
      const why = dtype === "f64"
        ? "f64 exists on the CPU device only"
        : "this adapter lacks the 'shader-f16' feature";
      throw new DTypeError(`${op}: dtype ${dtype} is not available on device ${this}: ${why}`);
    }
  }

  /** Marks the device unusable; every later use throws a DeviceError with `reason`. */
  markLost(reason: string): void {
    this.#lostReason ??= reason;
  }

  /** Null while usable, else why not. */
  get lostReason(): string | null {
    return this.#lostReason;
  }

  /** Throws a DeviceError naming `op` when the device was lost or destroyed. */
  checkAlive(op: string): void {
    if (this.#lostReason !== null) {
      throw new DeviceError(`${op}: device ${this} is lost (${this.#lostReason}); create a new one`);
    }
  }

  /** Frees the device's resources; later use is a DeviceError. */
  destroy(): void {
    this.markLost("destroyed by the caller");
    this.backend.destroy();
  }

  /**
   * This device's memory: `buffers` and `bytes` of live tensors' storage (like torch's
   * `memory_allocated`), `peakBytes` their high-water mark, `pooledBytes` freed storage kept for reuse.
   */
  memory(): MemoryStats {
    return this.backend.memoryStats();
  }

  /** Restarts {@link memory}'s `peakBytes` at the bytes live now. */
  resetPeakMemory(): void {
    this.backend.resetPeakMemory();
  }

  /**
   * Caps the bytes of live tensors: work that would pass it is a DeviceError naming the op and the bytes,
   * thrown before anything is allocated or queued. `null` removes the cap. The CPU device starts with half
   * the machine's memory (4 GiB where the runtime does not say); WebGPU devices with none of their own.
   */
  setMemoryLimit(bytes: number | null): void {
    if (bytes !== null && !(Number.isSafeInteger(bytes) && bytes >= 0)) {
      throw new ConfigError(
        `setMemoryLimit: the limit must be a whole number of bytes >= 0 or null, got ${showValue(bytes)}`,
      );
    }
    this.backend.memoryLimit = bytes;
  }

  /** The limit set by {@link setMemoryLimit} (or the device's default), null when there is none. */
  get memoryLimit(): number | null {
    return this.backend.memoryLimit;
  }

  /** Resolves once all work queued on this device is done (GPU errors from it are thrown here). */
  async sync(): Promise<void> {
    this.checkAlive("sync");
    await this.backend.sync();
  }

  toString(): string {
    return `${this.kind}(${this.name})`;
  }
}

let cpuSingleton: Device | null = null;

/** The CPU reference device (one per process). */
export function cpuDevice(): Device {
  cpuSingleton ??= new Device(createCpuBackend(), "cpu", "CPU reference");
  return cpuSingleton;
}

let defaultDev: Device | null = null;

/** Sets the device that tensor constructors and layers use when none is given. */
export function setDefaultDevice(device: Device): void {
  if (!(device instanceof Device)) {
    throw new DeviceError(`setDefaultDevice: expected a Device, got ${device}`);
  }
  defaultDev = device;
}

/** The device set by {@link setDefaultDevice}, or null when none was set. */
export function explicitDefaultDevice(): Device | null {
  return defaultDev;
}

/** The device used when none is given: the one set by {@link setDefaultDevice}, else the CPU. */
export function currentDevice(): Device {
  return defaultDev ?? cpuDevice();
}
