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

/**
 * Reads an attribute that some implementations expose as a throwing getter (bun-webgpu 0.1.7's
 * `isFallbackAdapter` throws "Not implemented"); a cosmetic or advisory attribute must not stop a device
 * from opening.
 */
function readSafely<T>(read: () => T): T | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

/**
 * Adapter info as the runtimes report it. bun-webgpu adds webgpu.h's numeric `backendType` and
 * `adapterType`; Dawn's Node binding and browsers add `isFallbackAdapter`.
 */
type AdapterInfo = Partial<GPUAdapterInfo> & {
  isFallbackAdapter?: boolean;
  backendType?: number | string;
  adapterType?: number | string;
};

/** webgpu.h's `WGPUBackendType_Null`, the value bun-webgpu reports for Dawn's do-nothing backend. */
const WGPU_BACKEND_NULL = 1;
/** webgpu.h's `WGPUAdapterType_CPU`, the value bun-webgpu reports for software rasterisers. */
const WGPU_ADAPTER_CPU = 3;

/** Adapter info across runtimes: the `info` attribute, or the older `requestAdapterInfo()`. */
async function adapterInfo(adapter: GPUAdapter): Promise<AdapterInfo> {
  const a = adapter as GPUAdapter & { requestAdapterInfo?: () => Promise<GPUAdapterInfo> };
  const info = readSafely(() => a.info);
  if (info !== undefined && info !== null) return info as AdapterInfo;
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
 * Whether an adapter is Dawn's null backend: bun-webgpu hands it out when Vulkan has no usable driver.
 * It accepts every command and computes nothing, so every result read back would be garbage.
 */
async function isNullBackend(adapter: GPUAdapter): Promise<boolean> {
  const info = await adapterInfo(adapter);
  return info.device === "null-backend" || info.backendType === WGPU_BACKEND_NULL ||
    info.backendType === "null";
}

/**
 * Whether an adapter is a software rasteriser (llvmpipe, lavapipe, SwiftShader): flagged as a fallback
 * adapter or a CPU adapter, or named so in its info.
 */
export async function isSoftwareAdapter(adapter: GPUAdapter): Promise<boolean> {
  const info = await adapterInfo(adapter);
  // The flag moved from the adapter into its info; the old attribute is read only when the info lacks
  // it (bun-webgpu's old attribute logs and throws, its info has the flag).
  const flags = adapter as GPUAdapter & { isFallbackAdapter?: boolean };
  const fallback = "isFallbackAdapter" in info
    ? info.isFallbackAdapter
    : readSafely(() => flags.isFallbackAdapter);
  if (fallback === true || info.adapterType === WGPU_ADAPTER_CPU || info.adapterType === "cpu") {
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

/** SwiftShader's Vulkan driver as Debian's and Ubuntu's `chromium` package installs it. */
const SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";

/**
 * Whether the GPU object is most likely Dawn outside a browser: one handed in by the caller (Node's
 * `webgpu`, Bun's `bun-webgpu`), or any on a runtime that is not Deno (whose WebGPU is wgpu).
 */
function likelyDawn(injected: boolean): boolean {
  const g = globalThis as { Deno?: unknown; Bun?: unknown; process?: { versions?: { node?: string } } };
  if (g.Deno !== undefined) return injected;
  return injected || g.Bun !== undefined || g.process?.versions?.node !== undefined;
}

/**
 * What to do when there is no usable adapter. Dawn (Node's `webgpu`, Bun's `bun-webgpu`) refuses Mesa's
 * lavapipe (it requires Vulkan's shaderUniform*ArrayDynamicIndexing features, which lavapipe lacks)
 * while Deno's wgpu accepts it; SwiftShader's Vulkan driver works for both.
 */
function noAdapterMessage(where: string, found: string, injected: boolean): string {
  if (likelyDawn(injected)) {
    return `${where}: no WebGPU adapter found (${found}). Dawn, the WebGPU of the 'webgpu' (Node) and ` +
      `'bun-webgpu' (Bun) packages, needs a Vulkan, Metal or D3D12 driver, and on Linux it rejects Mesa's ` +
      `lavapipe software driver (it requires Vulkan's shaderUniform*ArrayDynamicIndexing features). ` +
      `Check the GPU driver; without a GPU, use SwiftShader's Vulkan driver: install it (Debian/Ubuntu: ` +
      `apt-get install chromium) and run with VK_ICD_FILENAMES=${SWIFTSHADER_ICD}. If NVIDIA's driver ` +
      `printed "cannot allocate memory in static TLS block" (many Dawn instances in one process, as in a ` +
      `test runner), start the process with LD_PRELOAD naming its libnvidia-tls.so.<version>`;
  }
  return `${where}: no WebGPU adapter found (${found}). Check the GPU driver; on Linux without a GPU, ` +
    `Mesa's lavapipe provides a software adapter to Deno (apt-get install mesa-vulkan-drivers); in a ` +
    `browser, check that WebGPU is enabled`;
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

/** The adapter's own values of {@link WANTED_LIMITS} (only those it reports as numbers). */
function adapterLimits(adapter: GPUAdapter): Record<string, number> {
  const limits: Record<string, number> = {};
  for (const name of WANTED_LIMITS) {
    const v = readSafely(() => (adapter.limits as unknown as Record<string, number | undefined>)[name]);
    if (typeof v === "number") limits[name] = v;
  }
  return limits;
}

/** The optional features the backend uses, those of them the adapter offers. */
function wantedFeatures(adapter: GPUAdapter): GPUFeatureName[] {
  const features = readSafely(() => adapter.features);
  // shader-f16 for f16 tensors; timestamp-query lets profile() time kernels on the GPU.
  return (["shader-f16", "timestamp-query"] as GPUFeatureName[]).filter((f) => features?.has(f));
}

/**
 * Opens the device with the adapter's own limits, falling back to WebGPU's default limits when the
 * implementation rejects them: bun-webgpu 0.1.7 refuses every `requiredLimits` entry ("Value must be
 * between 0 and 0"). The backend reads the limits it got from the device, so a smaller device only
 * lowers the largest tensor it takes. When the adapter cannot try again (already consumed by the failed
 * request), a fresh one from the same GPU object is used.
 */
async function requestDeviceWithFallback(
  adapter: GPUAdapter,
  freshAdapter: (() => Promise<GPUAdapter | null>) | null,
  name: string,
  where: string,
): Promise<GPUDevice> {
  const requiredFeatures = wantedFeatures(adapter);
  const message = (e: unknown) => e instanceof Error ? e.message : String(e);
  let withLimits: unknown;
  try {
    return await adapter.requestDevice({ requiredFeatures, requiredLimits: adapterLimits(adapter) });
  } catch (e) {
    withLimits = e;
  }
  let withDefaults: unknown;
  try {
    return await adapter.requestDevice({ requiredFeatures });
  } catch (e) {
    withDefaults = e;
  }
  const fresh = freshAdapter === null ? null : await freshAdapter();
  if (fresh !== null && !(await isNullBackend(fresh))) {
    try {
      return await fresh.requestDevice({ requiredFeatures: wantedFeatures(fresh) });
    } catch (e) {
      withDefaults = e;
    }
  }
  throw new DeviceError(
    `${where}: requestDevice on ${name} failed with the adapter's limits (${message(withLimits)}) and ` +
      `with WebGPU's default limits (${message(withDefaults)})` +
      (freshAdapter === null
        ? "; an adapter opens one device only: pass { gpu } to get a fresh adapter"
        : ""),
  );
}

/**
 * Opens a WebGPU device on any adapter, software ones included. Requests the adapter's own limits and
 * `shader-f16` when offered (f16 tensors need it). Each call opens a new GPUDevice; when one is lost its
 * Device reports a DeviceError on the next use, and a new call gets a fresh one.
 */
export async function webgpuDevice(opts: WebGpuDeviceOptions = {}): Promise<Device> {
  const where = "webgpuDevice";
  validateOptions(opts, where);
  const injected = opts.gpu !== undefined;
  const gpu = opts.gpu ?? (globalThis.navigator as Navigator | undefined)?.gpu;
  const requestOptions: GPURequestAdapterOptions = opts.powerPreference
    ? { powerPreference: opts.powerPreference }
    : {};
  /** A new adapter from the GPU object, or null when the caller handed in the adapter itself. */
  const freshAdapter = opts.adapter !== undefined || gpu === undefined || gpu === null
    ? null
    : async (): Promise<GPUAdapter | null> => {
      try {
        return await gpu.requestAdapter(requestOptions);
      } catch (e) {
        throw new DeviceError(`${where}: requestAdapter failed: ${(e as Error).message}`);
      }
    };
  let adapter = opts.adapter ?? null;
  if (adapter === null) {
    if (freshAdapter === null) {
      throw new DeviceError(
        `${where}: this runtime has no WebGPU (navigator.gpu is missing); pass { gpu } from a WebGPU ` +
          `package such as 'webgpu' (Node) or 'bun-webgpu' (Bun)`,
      );
    }
    adapter = await freshAdapter();
    if (adapter === null) {
      throw new DeviceError(noAdapterMessage(where, "requestAdapter() returned null", injected));
    }
  }
  if (await isNullBackend(adapter)) {
    throw new DeviceError(
      noAdapterMessage(where, "the only adapter is Dawn's null backend, which computes nothing", injected),
    );
  }
  const name = await adapterName(adapter);
  const gpuDevice = await requestDeviceWithFallback(adapter, freshAdapter, name, where);
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
