/** Shared test utilities: relative error, fixtures, finite differences. */
import { readSafetensors } from "../src/io/safetensors.ts";
import type { Tensor } from "../src/tensor/mod.ts";

/** ||ours − ref|| / ||ref|| over the whole array (the project's definition of relative error). */
export function relErr(ours: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (ours.length !== ref.length) throw new Error(`relErr: lengths differ (${ours.length} vs ${ref.length})`);
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (ours[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Reads a fixture relative to test/fixtures. */
export function fixture(path: string): Uint8Array {
  return Deno.readFileSync(new URL(`./fixtures/${path}`, import.meta.url));
}

/** Reads a safetensors fixture into a map of { shape, data as number arrays }. */
export function loadFixture(
  path: string,
): Map<string, { shape: number[]; data: Float32Array | Float64Array }> {
  const out = new Map();
  for (const [k, v] of readSafetensors(fixture(path)).tensors) {
    const data = v.data instanceof BigInt64Array ? Float64Array.from(v.data, Number) : v.data;
    out.set(k, { shape: v.shape, data });
  }
  return out;
}

/** Values of a tensor as a plain array. */
export async function values(t: Tensor): Promise<number[]> {
  return Array.from(await t.data());
}

/** Each tensor's values as a Float32Array, disposing of the tensor once read. */
export async function takeValues(ts: readonly Tensor[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const t of ts) {
    out.push(Float32Array.from(await t.data()));
    t.dispose();
  }
  return out;
}
