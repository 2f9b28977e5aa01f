/**
 * Tensors larger than one storage binding, split into row blocks. WebGPU binds at most
 * `maxStorageBufferBindingSize` bytes of a buffer (browsers default to 128 MiB; Llama-3.2-1B's
 * embedding is 1.05 GB in f32), so such a tensor lives in several buffers, each holding whole rows. Only
 * a few operations take a split tensor (the backend says which): its upload, read and free, gathering
 * rows (the embedding), copying element ranges out (the fused loss's vocabulary chunks of a tied head),
 * packing, scattering rows into one (their gradients) and adding two with the same blocks. Every other
 * kernel refuses it with a DeviceError naming the op and the limit.
 *
 * This file has the layout arithmetic and the copies across blocks; the backend keeps the storage.
 * @module
 */
import { DeviceError } from "../../core/errors.ts";
import type { GpuBuffer, GpuRuntime } from "./runtime.ts";

/** One block of a split tensor: elements [start, start + size) of the tensor, in `buf` from byte 0. */
export interface GpuBlock {
  buf: GpuBuffer;
  start: number;
  size: number;
}

/** A contiguous run of a tensor's elements in one buffer (a block, or the whole of an unsplit tensor). */
export interface Piece {
  buf: GpuBuffer;
  /** First element of the tensor this buffer holds. */
  start: number;
  /** Elements it holds. */
  size: number;
}

/** The bytes one buffer may bind (the smaller of the binding and buffer limits). */
export function bufferLimit(rt: GpuRuntime): number {
  return Math.min(rt.limits.maxStorageBufferBindingSize, rt.limits.maxBufferSize);
}

/**
 * Rows of `rowLength` elements of `elementBytes` one buffer holds; an even count of elements per block
 * (so 2-byte blocks start on whole words, as copies need).
 */
export function rowsPerBlock(rowLength: number, elementBytes: number, limit: number): number {
  let rows = Math.floor(limit / Math.max(1, rowLength * elementBytes));
  if (rows > 1 && (rows * rowLength) % 2 === 1) rows--;
  return rows;
}

/**
 * The blocks (element ranges) of a tensor of `size` elements in rows of `rowLength`, or null when it
 * fits one buffer. Every block but the last has the same number of rows.
 * @throws {DeviceError} naming `what` when not even one row fits a buffer
 */
export function blockLayout(
  size: number,
  rowLength: number,
  elementBytes: number,
  limit: number,
  what: string,
): { start: number; size: number }[] | null {
  const bytes = Math.max(4, Math.ceil((size * elementBytes) / 4) * 4);
  if (bytes <= limit) return null;
  const rows = rowsPerBlock(rowLength, elementBytes, limit);
  if (rows < 1 || (elementBytes === 2 && rowLength % 2 === 1 && rows === 1)) {
    throw new DeviceError(
      `${what} needs ${bytes} bytes, more than one buffer binds (${limit} bytes), and a row of ${rowLength} ` +
        `elements does not fit one buffer to split it by rows`,
    );
  }
  const step = rows * rowLength;
  const out: { start: number; size: number }[] = [];
  for (let start = 0; start < size; start += step) out.push({ start, size: Math.min(step, size - start) });
  return out;
}

/**
 * Copies `count` elements from element `srcAt` of the tensor in `src` to element `dstAt` of the tensor in
 * `dst`, whichever buffers the ranges fall in (one copy per overlap).
 * @throws {DeviceError} for a 2-byte copy that does not start and end on whole words (except at the end of
 *   the source and destination data, where buffers are padded)
 */
export function copyElements(
  rt: GpuRuntime,
  src: readonly Piece[],
  srcAt: number,
  dst: readonly Piece[],
  dstAt: number,
  count: number,
  elementBytes: number,
  op: string,
): void {
  let done = 0;
  while (done < count) {
    const s = src.find((p) => srcAt + done >= p.start && srcAt + done < p.start + p.size)!;
    const d = dst.find((p) => dstAt + done >= p.start && dstAt + done < p.start + p.size)!;
    const sOff = srcAt + done - s.start, dOff = dstAt + done - d.start;
    const n = Math.min(count - done, s.size - sOff, d.size - dOff);
    let bytes = n * elementBytes;
    const aligned = (sOff * elementBytes) % 4 === 0 && (dOff * elementBytes) % 4 === 0;
    if (bytes % 4 !== 0) {
      // An odd 2-byte tail moves a padding half along with it: only where both sides end there.
      if (sOff + n !== s.size || dOff + n !== d.size) {
        throw new DeviceError(`${op}: a copy of ${n} 2-byte elements ends inside a word`);
      }
      bytes += 2;
    }
    if (!aligned) throw new DeviceError(`${op}: a copy of 2-byte elements starts inside a word`);
    rt.copy(s.buf, sOff * elementBytes, d.buf, dOff * elementBytes, bytes);
    done += n;
  }
}
