/**
 * WebGPU devices: `webgpuDevice()` opens any adapter (hardware or software), `defaultDevice()` picks a
 * hardware GPU when there is one and the CPU reference otherwise.
 * @module
 */
import { cpuDevice, Device, explicitDefaultDevice } from "../device.ts";
import { ConfigError, DeviceError } from "../../core/errors.ts";
import { checkOptionKeys, showValue } from "../../core/options.ts";
import { WebGpuBackend } from "./backend.ts";

/** Options of {@link webgpuDevice}. */
export interface WebGpuDeviceOptions {
  /**
   * The WebGPU entry point; default `navigator.gpu` (Deno, browsers). On Node pass `create([])` from the
   * `webgpu` package, on Bun the object of `bun-webgpu`.
   */
  gpu?: GPU;
  /** A specific adapter to open (takes precedence over `gpu`); an adapter opens one device only. */
  adapter?: GPUAdapter;
  /** Passed to `requestAdapter` when no adapter is given. */
  powerPreference?: GPUPowerPreference;
}

/** Limits the backend uses, requested at the adapter's maximum rather than WebGPU's small defaults. */
const WANTED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxUniformBufferBindingSize",
] as const;

const SOFTWARE_NAMES = /llvmpipe|lavapipe|swiftshader|software rasterizer|microsoft basic render/i;

/** Adapter info across runtimes: the `info` attribute, or the older `requestAdapterInfo()`. */
async function adapterInfo(adapter: GPUAdapter): Promise<Partial<GPUAdapterInfo>> {
  const a = adapter as GPUAdapter & { requestAdapterInfo?: () => Promise<GPUAdapterInfo> };
  if (a.info !== undefined) return a.info;
  if (typeof a.requestAdapterInfo === "function") {
    try {
      return await a.requestAdapterInfo();
    } catch {
      // Older implementations may refuse; the name is cosmetic.
    }
  }
  return {};
}

/**
 * Whether an adapter is a software rasteriser (llvmpipe, lavapipe, SwiftShader): flagged as a fallback
 * adapter, or named so in its info.
 */
export async function isSoftwareAdapter(adapter: GPUAdapter): Promise<boolean> {
  const info = await adapterInfo(adapter);
  const flags = adapter as GPUAdapter & { isFallbackAdapter?: boolean };
  if (
    flags.isFallbackAdapter === true || (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true
  ) {
    return true;
  }
  return SOFTWARE_NAMES.test([info.description, info.device, info.vendor, info.architecture].join(" "));
}

/** A readable adapter name from its info. */
async function adapterName(adapter: GPUAdapter): Promise<string> {
  const info = await adapterInfo(adapter);
  return info.description || [info.vendor, info.architecture, info.device].filter((s) => s).join(" ") ||
    "WebGPU adapter";
}

function noAdapterMessage(where: string): string {
  return `${where}: no WebGPU adapter found (requestAdapter() returned null). Check the GPU driver; on Linux ` +
    `without a GPU, Mesa's lavapipe provides a software adapter (apt-get install mesa-vulkan-drivers)`;
}

/** Bad option values are the caller's mistake (ConfigError), unlike a missing or failing adapter. */
function validateOptions(opts: unknown, where: string): asserts opts is WebGpuDeviceOptions {
  const o = checkOptionKeys(opts, ["gpu", "adapter", "powerPreference"], where);
  const hasMethod = (v: unknown, m: string) =>
    typeof v === "object" && v !== null && typeof (v as Record<string, unknown>)[m] === "function";
  if (o.gpu !== undefined && !hasMethod(o.gpu, "requestAdapter")) {
    throw new ConfigError(
      `${where}: option gpu must be a GPU object (with requestAdapter), got ${showValue(o.gpu)}`,
    );
  }
  if (
    o.adapter !== undefined && (!hasMethod(o.adapter, "requestDevice") || !(o.adapter as GPUAdapter).limits)
  ) {
    throw new ConfigError(`${where}: option adapter must be a GPUAdapter, got ${showValue(o.adapter)}`);
  }
  if (
    o.powerPreference !== undefined && o.powerPreference !== "low-power" &&
    o.powerPreference !== "high-performance"
  ) {
    throw new ConfigError(
      `${where}: option powerPreference must be "low-power" or "high-performance", got ${
        showValue(o.powerPreference)
      }`,
    );
  }
}

/**
 * Opens a WebGPU device on any adapter, software ones included. Requests the adapter's own limits and
 * `shader-f16` when offered (f16 tensors need it). Each call opens a new GPUDevice; when one is lost its
 * Device reports a DeviceError on the next use, and a new call gets a fresh one.
 */
export async function webgpuDevice(opts: WebGpuDeviceOptions = {}): Promise<Device> {
  const where = "webgpuDevice";
  validateOptions(opts, where);
  let adapter = opts.adapter ?? null;
  if (adapter === null) {
    const gpu = opts.gpu ?? (globalThis.navigator as Navigator | undefined)?.gpu;
    if (gpu === undefined || gpu === null) {
      throw new DeviceError(
        `${where}: this runtime has no WebGPU (navigator.gpu is missing); pass { gpu } from a WebGPU ` +
          `package such as 'webgpu' (Node) or 'bun-webgpu' (Bun)`,
      );
    }
    try {
      adapter = await gpu.requestAdapter(
        opts.powerPreference ? { powerPreference: opts.powerPreference } : {},
      );
    } catch (e) {
      throw new DeviceError(`${where}: requestAdapter failed: ${(e as Error).message}`);
    }
    if (adapter === null) throw new DeviceError(noAdapterMessage(where));
  }
  const requiredLimits: Record<string, number> = {};
  for (const name of WANTED_LIMITS) {
    const v = (adapter.limits as unknown as Record<string, number | undefined>)[name];
    if (typeof v === "number") requiredLimits[name] = v;
  }
  const requiredFeatures: GPUFeatureName[] = adapter.features.has("shader-f16") ? ["shader-f16"] : [];
  const name = await adapterName(adapter);
  let gpuDevice: GPUDevice;
  try {
    gpuDevice = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  } catch (e) {
    throw new DeviceError(
      `${where}: requestDevice on ${name} failed (an adapter opens one device only; pass { gpu } to get a ` +
        `fresh adapter): ${(e as Error).message}`,
    );
  }
  const software = await isSoftwareAdapter(adapter);
  const backend = new WebGpuBackend(gpuDevice, name, software);
  const device = new Device(backend, "webgpu", name, software);
  gpuDevice.lost.then((info) => {
    const reason = `${info.reason ?? "unknown"}: ${info.message || "device lost"}`;
    backend.rt.markLost(reason);
    device.markLost(reason);
  });
  return device;
}

let defaultGpu: Promise<Device | null> | null = null;

/** A WebGPU device on a hardware adapter, or null when there is none. */
async function openHardwareGpu(): Promise<Device | null> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (gpu === undefined || gpu === null) return null;
  try {
    const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    if (adapter === null || await isSoftwareAdapter(adapter)) return null;
    return await webgpuDevice({ adapter });
  } catch {
    return null; // a broken driver falls back to the CPU rather than failing the program
  }
}

/**
 * The device to use when none is given: the one set by `setDefaultDevice`, else WebGPU on a hardware
 * adapter (opened once and reused until lost), else the CPU reference. Software adapters (llvmpipe,
 * lavapipe, SwiftShader) are never picked here (they exist for testing); ask for them with
 * {@link webgpuDevice}.
 */
export async function defaultDevice(): Promise<Device> {
  const explicit = explicitDefaultDevice();
  if (explicit !== null) return explicit;
  const cached = defaultGpu === null ? null : await defaultGpu;
  if (cached !== null && cached.lostReason === null) return cached;
  defaultGpu = openHardwareGpu();
  const opened = await defaultGpu;
  // Without a hardware GPU, look again next time rather than remembering the absence.
  if (opened === null) defaultGpu = null;
  return opened ?? cpuDevice();
}
