/**
 * The WebGPU device a benchmark runs on: Deno's own WebGPU (wgpu), or with `--dawn` Dawn, the WebGPU of
 * Chrome and of Node's `webgpu` package, whose native addon (`dawn.node`) Deno loads through npm
 * (../shared/docs/DEVICE.md, "Dawn on the H200"). `--dawn-toggles a,b` adds Dawn toggles (Dawn's
 * Toggles.cpp names them, e.g. `disable_robustness`, `disable_workgroup_init`) to `allow_unsafe_apis`, and
 * `--dawn-disable a,b` turns default ones off (e.g. `lazy_clear_resource_on_first_use`), to find which of
 * Dawn's safety measures a slow kernel pays for.
 * @module
 */
import { type Device, webgpuDevice } from "../mod.ts";

/** The value after `name` in `argv`, or `fallback`. */
export function argValue(argv: readonly string[], name: string, fallback: string): string {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
}

/** Which WebGPU implementation `argv` asks for, in words for the report. */
export function implementationName(argv: readonly string[]): string {
  if (!argv.includes("--dawn")) return "Deno WebGPU (wgpu)";
  const toggles = argValue(argv, "--dawn-toggles", ""), off = argValue(argv, "--dawn-disable", "");
  return `Dawn (webgpu npm package)${toggles === "" ? "" : `, toggles ${toggles}`}${
    off === "" ? "" : `, disabled ${off}`
  }`;
}

/**
 * Opens the device `argv` asks for. Dawn's GPU object is kept alive here for the life of the process
 * (the addon's instance lives as long as a reference to it does).
 */
export async function benchDevice(argv: readonly string[]): Promise<Device> {
  if (!argv.includes("--dawn")) return await webgpuDevice();
  const toggles = argValue(argv, "--dawn-toggles", ""), off = argValue(argv, "--dawn-disable", "");
  const { create } = await import("webgpu");
  const options = [`enable-dawn-features=allow_unsafe_apis${toggles === "" ? "" : `,${toggles}`}`];
  if (off !== "") options.push(`disable-dawn-features=${off}`);
  const gpu = create(options);
  keepAlive.push(gpu);
  return await webgpuDevice({ gpu: gpu as unknown as GPU });
}

const keepAlive: unknown[] = [];
