/**
 * `profile(fn, { device })`: where a piece of work spends its time, per kernel on WebGPU (GPU timestamps
 * where the adapter has `timestamp-query`, else the host time spent recording each kernel) and per op on
 * the CPU (host time).
 * @module
 */
import type { ProfileRow } from "./backend.ts";
import { currentDevice, Device } from "./device.ts";
import { ConfigError } from "../core/errors.ts";
import { checkOptionKeys, showValue } from "../core/options.ts";

export type { ProfileRow } from "./backend.ts";

/** What {@link profile} measured. */
export interface ProfileResult {
  /** One row per kernel (WebGPU) or op (CPU), slowest first. */
  rows: ProfileRow[];
  /** Wall-clock milliseconds of `fn` and of waiting for its work to finish. */
  totalMs: number;
  /** The sum of the rows' milliseconds. */
  measuredMs: number;
  /** "gpu-timestamps" or "host": what the rows' milliseconds are. */
  timing: "gpu-timestamps" | "host";
  /** A table: name, calls, ms, share of measuredMs. */
  toString(): string;
}

/** Options of {@link profile}. */
export interface ProfileOptions {
  /** The device whose work is timed; default the current default device. */
  device?: Device;
  /**
   * Rows per kernel and shape (GEMM: m x n x k and plan; other WebGPU kernels: their grid) instead of per
   * kernel. Default false.
   */
  detail?: boolean;
}

const active = new WeakSet<Device>();

/**
 * Runs `fn` (sync or async), waits until the device finished its work, and returns the time per kernel
 * or op. While profiling, WebGPU dispatches run one per compute pass so that each gets its own
 * timestamps: the profiled work itself runs somewhat slower than without the profile. Profiles of one
 * device do not nest (a ConfigError).
 */
export async function profile(
  fn: () => unknown | Promise<unknown>,
  opts: ProfileOptions = {},
): Promise<ProfileResult> {
  const o = checkOptionKeys(opts, ["device", "detail"], "profile");
  if (typeof fn !== "function") throw new ConfigError(`profile: expected a function, got ${showValue(fn)}`);
  if (o.device !== undefined && !(o.device instanceof Device)) {
    throw new ConfigError(`profile: option device must be a Device, got ${showValue(o.device)}`);
  }
  if (o.detail !== undefined && typeof o.detail !== "boolean") {
    throw new ConfigError(`profile: option detail must be true or false, got ${showValue(o.detail)}`);
  }
  const device = (o.device as Device | undefined) ?? currentDevice();
  device.checkAlive("profile");
  if (active.has(device)) throw new ConfigError(`profile: device ${device} is already being profiled`);
  active.add(device);
  let rows: ProfileRow[];
  let timestamps: boolean;
  let totalMs: number;
  try {
    await device.sync(); // earlier work is not this profile's
    ({ timestamps } = device.backend.beginProfile(o.detail === true));
    const t0 = performance.now();
    try {
      await fn();
      await device.sync();
    } finally {
      totalMs = performance.now() - t0;
      rows = await device.backend.endProfile();
    }
  } finally {
    active.delete(device);
  }
  rows.sort((a, b) => b.ms - a.ms || b.calls - a.calls || (a.name < b.name ? -1 : 1));
  const measuredMs = rows.reduce((s, r) => s + r.ms, 0);
  const timing = timestamps ? "gpu-timestamps" : "host";
  return {
    rows,
    totalMs,
    measuredMs,
    timing,
    toString: () => formatProfile(rows, totalMs, measuredMs, timing),
  };
}

function formatProfile(rows: ProfileRow[], totalMs: number, measuredMs: number, timing: string): string {
  const width = Math.max(4, ...rows.map((r) => r.name.length));
  const lines = [
    `${"name".padEnd(width)}  ${"calls".padStart(7)}  ${"ms".padStart(10)}  ${"share".padStart(6)}`,
    ...rows.map((r) =>
      `${r.name.padEnd(width)}  ${String(r.calls).padStart(7)}  ${r.ms.toFixed(3).padStart(10)}  ${
        (measuredMs > 0 ? (100 * r.ms / measuredMs).toFixed(1) + "%" : "-").padStart(6)
      }`
    ),
    `${rows.length} rows, ${measuredMs.toFixed(3)} ms measured (${timing}), ${totalMs.toFixed(3)} ms wall`,
  ];
  return lines.join("\n");
}
