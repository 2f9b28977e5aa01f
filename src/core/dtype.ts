/**
 * Element types. f32 is the working type everywhere; f64 exists on the CPU reference for gradient
 * checks; f16 is a storage type (math accumulates in f32) on WebGPU with `shader-f16`, and on the CPU
 * reference as f32 values rounded to f16 after every op, which is what the GPU stores.
 * @module
 */
import { roundToF16 } from "./half.ts";

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
