/**
 * Element types. f32 is the working type everywhere; f64 exists on the CPU reference for gradient
 * checks; f16 is a storage type (math accumulates in f32) on WebGPU with `shader-f16`, and on the CPU
 * reference as f32 values rounded to f16 after every op, which is what the GPU stores.
 * @module
 */

/** Element type of a tensor. */
export type DType = "f32" | "f16" | "f64";

/** Host array holding a tensor's values: Float64Array for f64, Float32Array otherwise. */
export type HostArray = Float32Array | Float64Array;

/** All dtypes, in a fixed order. */
export const DTYPES: readonly DType[] = ["f32", "f16", "f64"];

/** Whether `x` names a dtype. */
export function isDType(x: unknown): x is DType {
  return x === "f32" || x === "f16" || x === "f64";
}

/** Bytes per element as stored on a device. */
export function dtypeSize(dtype: DType): number {
  return dtype === "f64" ? 8 : dtype === "f32" ? 4 : 2;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Rounds a number to the nearest f16 value (ties to even), returned as a JS number. */
export function roundToF16(x: number): number {
  if (!Number.isFinite(x) || x === 0) return Number.isNaN(x) ? NaN : x;
  const ax = Math.abs(x);
  if (ax >= 65520) return x > 0 ? Infinity : -Infinity; // past the midpoint of max f16 and the next power
  // Round in f64 to the f16 grid: the quantum is 2^(e-10) for normals, 2^-24 for subnormals.
  const e = Math.max(Math.floor(Math.log2(ax)), -14);
  let q = Math.pow(2, e - 10);
  // log2 can be off by one near powers of two; fix the exponent so that ax / 2^e is in [1, 2).
  if (ax / Math.pow(2, e) >= 2) q *= 2;
  else if (e > -14 && ax / Math.pow(2, e) < 1) q /= 2;
  const n = ax / q;
  let r = Math.round(n);
  if (r - n === 0.5 && r % 2 === 1) r -= 1; // Math.round rounds .5 up; ties go to even
  const v = r * q;
  return x < 0 ? -v : v;
}

/** Rounds every element of `a` to `dtype` in place (a no-op for f32 arrays and f64). */
export function roundInPlace(a: HostArray, dtype: DType): HostArray {
  if (dtype === "f16") { for (let i = 0; i < a.length; i++) a[i] = roundToF16(a[i]); }
  return a;
}

/** Allocates a host array for `n` elements of `dtype`. */
export function hostArray(dtype: DType, n: number): HostArray {
  return dtype === "f64" ? new Float64Array(n) : new Float32Array(n);
}

/** The f32 bit pattern of `x` (for hashing and exact comparisons in tests). */
export function f32Bits(x: number): number {
  f32Scratch[0] = x;
  return u32Scratch[0];
}
