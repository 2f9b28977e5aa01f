/**
 * The WebGPU device the GPU suite runs on, opened once per test process. In CI (env CI=true) a missing
 * adapter fails the suite; elsewhere the GPU tests are skipped with a printed reason.
 */
import { type Device, webgpuDevice } from "../../../mod.ts";

/** Dawn's GPU object while the suite runs on it (its addon's instance lives as long as this reference). */
let dawnGpu: unknown = null;

/**
 * Deno's own WebGPU, or with env LORA_TEST_WEBGPU=dawn Dawn through the `webgpu` npm package's addon (what
 * Chrome and Node users run; ../shared/docs/DEVICE.md "Dawn on the H200"), so the same suite checks both.
 * On Dawn, `navigator.gpu` is replaced by Dawn's GPU object too, so the tests that open devices of their
 * own with `webgpuDevice()` in a module importing this one run on Dawn as well.
 */
async function openDevice(): Promise<Device> {
  if (Deno.env.get("LORA_TEST_WEBGPU") !== "dawn") return await webgpuDevice();
  const { create } = await import("webgpu");
  dawnGpu = create(["enable-dawn-features=allow_unsafe_apis"]);
  Object.defineProperty(globalThis.navigator, "gpu", { value: dawnGpu, configurable: true });
  return await webgpuDevice({ gpu: dawnGpu as GPU });
}

async function open(): Promise<{ device: Device | null; reason: string }> {
  try {
    return { device: await openDevice(), reason: "" };
  } catch (e) {
    if (Deno.env.get("CI") === "true") {
      throw new Error(`CI=true but no WebGPU device could be opened, so the GPU suite cannot run: ${e}`);
    }
    return { device: null, reason: String((e as Error).message ?? e) };
  }
}

const onDawn = Deno.env.get("LORA_TEST_WEBGPU") === "dawn";
const opened = await open();
if (opened.device === null) {
  console.warn(`skipping the WebGPU tests: ${opened.reason}`);
} else if (!opened.device.supportsDType("f16")) {
  // The f16 cases need shader-f16. CI's adapter (lavapipe) has it, and must keep it, or f16 coverage
  // would vanish unnoticed. Dawn offers none on SwiftShader or on the H200: there they are skipped.
  if (Deno.env.get("CI") === "true" && !onDawn) {
    throw new Error(
      `CI=true but ${opened.device} lacks shader-f16, so the f16 cases of the GPU suite cannot run`,
    );
  }
  console.warn(`the f16 cases of the WebGPU tests are skipped: ${opened.device} lacks shader-f16`);
}

/** The shared WebGPU test device, or null when there is none (outside CI). */
export const gpu: Device | null = opened.device;

// Destroy the device when this test module's tests are over (`deno test` sends "unload" per module), so no
// device of a finished module is still alive when the process exits. Twice in four CI runs of 2026-12-01
// the test process aborted after its summary with glibc's "corrupted size vs. prev_size" while lavapipe
// was being torn down; devices still open at exit are the suspect. Whether this removes it is not shown.
// Not on Dawn: there destroying the device at unload kills the process with a segmentation fault before
// the next module runs (on the H200 and on SwiftShader, 2026-12-02), and Dawn never showed the abort.
if (!onDawn) globalThis.addEventListener("unload", () => gpu?.destroy());

/** Whether GPU tests must be skipped (no adapter outside CI). */
export const noGpu: boolean = gpu === null;

/** The shared device; only call inside tests registered with `ignore: noGpu`. */
export function gpuDevice(): Device {
  if (gpu === null) throw new Error("gpuDevice: no WebGPU device (this test should have been ignored)");
  return gpu;
}

/**
 * Registers a GPU test: skipped (with the reason printed once above) when there is no adapter outside CI.
 * Sanitizers stay on: tests must leave no pending reads behind.
 */
export function gpuTest(name: string, fn: (device: Device) => Promise<void> | void): void {
  Deno.test({ name, ignore: noGpu, fn: () => fn(gpuDevice()) });
}
