/**
 * `widenHalf`: 16-bit floats (BF16 or F16 bit patterns, two to a 32-bit word, little-endian) widened to
 * f32 on the device (wgsl/widen_half.wgsl). The checkpoint loader uploads a BF16/F16 tensor's bytes as
 * they lie in the file and converts them here instead of element by element on the host.
 * @module
 */
import { hostArray } from "../../core/dtype.ts";
import { f16ToF32BitsTable } from "../../core/half.ts";
import { expectSize, type KernelRecord } from "./record.ts";

/** Arguments of {@link WIDEN_HALF}. */
export interface WidenHalfArgs {
  /** How the 16-bit words encode a number. */
  format: "bf16" | "f16";
  /** Elements (16-bit words) to widen; the input holds ⌈n / 2⌉ 32-bit words. */
  n: number;
}

/** The widening kernel: input raw words (an f32 storage holding the bits), output y [n] (f32). */
export const WIDEN_HALF: KernelRecord<WidenHalfArgs> = {
  name: "widen_half",
  template: "widen_half",
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }],
  check: ([x], { n }) => expectSize(x.size, Math.ceil(n / 2), "widenHalf", `raw words of ${n} halves`),
  outputs: (_, a) => [{ size: a.n, dtype: "f32", what: `widenHalf: output of ${a.n} elements (f32)` }],
  specialise: (_, a) => ({ FORMAT: a.format }),
  uniforms: (a) => ({ n: a.n }),
  geometry: (a) => ({ elements: a.n }),
  reference([x], { format, n }) {
    // The input's elements are bit patterns: read them as words, never as numbers.
    const words = new Uint32Array(x.buffer, x.byteOffset, Math.ceil(n / 2));
    const bits = new Uint32Array(n);
    const table = format === "f16" ? f16ToF32BitsTable() : null;
    for (let i = 0; i < n; i++) {
      const h = (words[i >> 1] >>> ((i & 1) * 16)) & 0xffff;
      bits[i] = table === null ? h << 16 : table[h];
    }
    const out = hostArray("f32", n);
    out.set(new Float32Array(bits.buffer));
    return [out];
  },
};
