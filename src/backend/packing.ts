/**
 * Argument checks of {@link Backend.pack} and {@link Backend.unpack}, shared by both backends so they
 * refuse the same calls: offsets in order without overlap, inside the packed array, and even for 2-byte
 * dtypes (a GPU copies whole 4-byte words).
 * @module
 */
import { type DType, dtypeSize } from "../core/dtype.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import type { Storage } from "./backend.ts";

/** The element alignment of packed segments of `dtype`: 2 for 2-byte types, else 1. */
export function packAlignment(dtype: DType): number {
  return dtypeSize(dtype) < 4 ? 4 / dtypeSize(dtype) : 1;
}

/** Throws a ShapeError naming `op` unless the segments are sorted, disjoint, aligned and inside `total`. */
export function checkSegments(
  op: string,
  offsets: readonly number[],
  sizes: readonly number[],
  total: number,
  dtype: DType,
): void {
  if (offsets.length !== sizes.length) {
    throw new ShapeError(`${op}: ${offsets.length} offsets for ${sizes.length} segments`);
  }
  const align = packAlignment(dtype);
  let end = 0;
  for (let i = 0; i < offsets.length; i++) {
    const o = offsets[i], n = sizes[i];
    if (
      !Number.isInteger(o) || o < end || o % align !== 0 || !Number.isInteger(n) || n < 0 || o + n > total
    ) {
      throw new ShapeError(
        `${op}: segment ${i} at offset ${o} of ${n} elements is out of order, overlapping, not a multiple of ${align} or outside the ${total} packed elements (${dtype})`,
      );
    }
    end = o + n;
  }
}

/** The checks of a pack call; returns each part's size (0 for null parts). */
export function checkPack(
  parts: readonly (Storage | null)[],
  offsets: readonly number[],
  total: number,
  dtype: DType,
): number[] {
  parts.forEach((s, i) => {
    if (s !== null && s.dtype !== dtype) {
      throw new DTypeError(`pack: part ${i} is ${s.dtype}, the packed array ${dtype}`);
    }
  });
  const sizes = parts.map((s) => s?.size ?? 0);
  checkSegments("pack", offsets, sizes, total, dtype);
  return sizes;
}
