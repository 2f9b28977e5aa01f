/**
 * Quantized frozen weights (QLoRA's NF4 and a per-row int8): the packed layout, the two kernels that
 * quantize a weight on its device (`QUANT_SCALES`, then `QUANT_PACK`), the dequantizing copy
 * (`DEQUANTIZE`), and the host decoder the CPU reference uses inside its GEMMs. The dequantizing GEMMs
 * themselves are the GEMM templates with the `QUANT_B` flag (wgsl/gemm/operands.wgsl); all of them share
 * the code tables of wgsl/quant_codes.wgsl.
 *
 * The packed weight is one f32 storage read as 32-bit words: first the codes, then one f32 scale per block.
 * A weight [out, in] is flattened row-major and cut into blocks (NF4: `blockSize` elements; int8: one
 * block per row, `in` elements), so element i's scale is word `codeWords + floor(i / block)`.
 * - NF4: four bits per element, two per byte, the even element in the high nibble (bitsandbytes' order),
 *   bytes little-endian within a word; the scale is the block's absolute maximum a, the code the index of
 *   the NF4 value nearest to w / a (f32 division), a value exactly at a midpoint (rounded to f32) going
 *   to the lower code; an all-zero block stores a = 0 and code 7 (the table's 0). Dequantized: NF4[c] · a.
 * - int8: one two's-complement byte per element, bytes little-endian within a word; the scale is
 *   s = a / 127 for the row's absolute maximum a, the code round-half-away-from-zero(w / s) clamped to
 *   ±127 (0 when s = 0). Dequantized: q · s.
 * Every product and quotient is one f32 operation, on the CPU too (Math.fround).
 * @module
 */
import type { DType, HostArray } from "../../core/dtype.ts";
import { ConfigError, ShapeError } from "../../core/errors.ts";
import type { KernelRecord } from "./record.ts";

/** The quantization schemes of a frozen base weight. */
export type QuantScheme = "nf4" | "int8";

/** All schemes, for validation messages. */
export const QUANT_SCHEMES: readonly QuantScheme[] = ["nf4", "int8"];

/**
 * QLoRA's 16 NF4 values (bitsandbytes' table), each exactly an f32. Ascending; index 7 is 0.
 */
export const NF4_VALUES: readonly number[] = [
  -1,
  -0.6961928009986877,
  -0.5250730514526367,
  -0.39491748809814453,
  -0.28444138169288635,
  -0.18477343022823334,
  -0.09105003625154495,
  0,
  0.07958029955625534,
  0.16093020141124725,
  0.24611230194568634,
  0.33791524171829224,
  0.44070982933044434,
  0.5626170039176941,
  0.7229568362236023,
  1,
];

/** Decision points between neighbouring NF4 values, rounded to f32 (wgsl/quant_codes.wgsl has their bits). */
export const NF4_MIDPOINTS: readonly number[] = NF4_VALUES.slice(0, 15).map((v, i) =>
  Math.fround((v + NF4_VALUES[i + 1]) / 2)
);

/** How a packed weight is laid out: scheme, block length and the words of codes before the scales. */
export interface QuantLayout {
  readonly scheme: QuantScheme;
  /** Elements per scale (NF4: the block size; int8: in_features, one block per row). */
  readonly block: number;
  /** Elements of the unpacked weight. */
  readonly size: number;
  /** 32-bit words of codes; the scales start at this word. */
  readonly codeWords: number;
  /** Number of blocks (scales). */
  readonly blocks: number;
  /** Words of the whole packed storage. */
  readonly words: number;
}

/** The layout of a weight of `size` elements quantized with `scheme` in blocks of `block`. */
export function quantLayout(scheme: QuantScheme, size: number, block: number): QuantLayout {
  if (!QUANT_SCHEMES.includes(scheme)) {
    throw new ConfigError(`quantize: unknown scheme ${JSON.stringify(scheme)} (expected "nf4" or "int8")`);
  }
  if (!Number.isInteger(block) || block < 1 || !Number.isInteger(size) || size < 1) {
    throw new ShapeError(`quantize: block ${block} and size ${size} must be positive integers`);
  }
  const codeWords = Math.ceil(size / (scheme === "nf4" ? 8 : 4));
  const blocks = Math.ceil(size / block);
  return { scheme, block, size, codeWords, blocks, words: codeWords + blocks };
}

/** The bit shift of element i's code within its word (NF4: even elements in the high nibble). */
function codeShift(scheme: QuantScheme, i: number): number {
  return scheme === "nf4" ? ((i >> 1) & 3) * 8 + ((i & 1) === 1 ? 0 : 4) : (i & 3) * 8;
}

/** The NF4 code of v = w / absmax: the count of midpoints below v (ties go to the lower code). */
export function nf4Code(v: number): number {
  let c = 0;
  for (const mid of NF4_MIDPOINTS) if (v > mid) c++;
  return c;
}

/** The int8 code of w with scale s: round half away from zero of w / s (f32), clamped to ±127. */
export function int8Code(w: number, s: number): number {
  if (s === 0) return 0;
  const v = Math.fround(w / s);
  const r = Math.sign(v) * Math.floor(Math.abs(v) + 0.5);
  return Math.max(-127, Math.min(127, r));
}

/** Words of a host float array (its bit patterns, no copy). */
export function wordsOf(a: HostArray): Uint32Array {
  if (!(a instanceof Float32Array)) throw new ShapeError(`quantize: packed weights are f32 words`);
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

/** The scales of a weight's values: per block absmax (NF4) or absmax / 127 (int8), as f32. */
export function quantScales(w: ArrayLike<number>, layout: QuantLayout): Float32Array {
  const s = new Float32Array(layout.blocks);
  for (let b = 0; b < layout.blocks; b++) {
    let a = 0;
    const end = Math.min(layout.size, (b + 1) * layout.block);
    for (let i = b * layout.block; i < end; i++) a = Math.max(a, Math.abs(w[i]));
    s[b] = layout.scheme === "nf4" ? a : Math.fround(a / 127);
  }
  return s;
}

/** The packed words of a weight's values (codes, then the scales' bits): the CPU twin of the two kernels. */
export function quantizeValues(w: ArrayLike<number>, layout: QuantLayout): Float32Array {
  const out = new Float32Array(layout.words);
  const words = wordsOf(out);
  const scales = quantScales(w, layout);
  for (let i = 0; i < layout.size; i++) {
    const s = scales[Math.floor(i / layout.block)];
    const code = layout.scheme === "nf4"
      ? (s === 0 ? 7 : nf4Code(Math.fround(w[i] / s)))
      : int8Code(w[i], s) & 0xff;
    const word = layout.scheme === "nf4" ? i >> 3 : i >> 2;
    words[word] = (words[word] | (code << codeShift(layout.scheme, i))) >>> 0;
  }
  words.set(wordsOf(scales), layout.codeWords);
  return out;
}

/** The code of element i in packed words (NF4: 0..15; int8: −127..127). */
export function codeAt(words: Uint32Array, layout: QuantLayout, i: number): number {
  if (layout.scheme === "nf4") return (words[i >> 3] >>> codeShift("nf4", i)) & 15;
  return ((words[i >> 2] >>> codeShift("int8", i)) << 24) >> 24;
}

/** The dequantized weight from packed words, every value one f32 product. */
export function dequantizeValues(packed: HostArray, layout: QuantLayout): Float32Array {
  const words = wordsOf(packed);
  const scales = new Float32Array(words.buffer, words.byteOffset + layout.codeWords * 4, layout.blocks);
  const out = new Float32Array(layout.size);
  for (let i = 0; i < layout.size; i++) {
    const s = scales[Math.floor(i / layout.block)];
    const c = codeAt(words, layout, i);
    out[i] = Math.fround((layout.scheme === "nf4" ? NF4_VALUES[c] : c) * s);
  }
  return out;
}

/** Template flags of the quantization kernels. */
function quantSpec(layout: QuantLayout, inType?: DType) {
  return { ...(inType ? { T: inType } : {}), QUANT: layout.scheme };
}

/** Arguments of the quantization kernels: the layout. */
export interface QuantArgs {
  layout: QuantLayout;
}

const checkInput = (op: string, size: number, dtype: DType, layout: QuantLayout): void => {
  if (size !== layout.size) throw new ShapeError(`${op}: weight has ${size} elements, layout ${layout.size}`);
  if (dtype === "f64") throw new ShapeError(`${op}: weights to quantize are f32 or f16, got ${dtype}`);
};

/** Step 1 of quantizing on a device: one f32 scale per block (one invocation each). */
export const QUANT_SCALES: KernelRecord<QuantArgs> = {
  name: "quant_scales",
  template: "quant_scales",
  bindings: [{ name: "w", access: "read" }, { name: "scales", access: "write" }],
  params: [{ name: "size", type: "u32" }, { name: "block", type: "u32" }, { name: "blocks", type: "u32" }],
  check: ([w], { layout }) => checkInput("quantScales", w.size, w.dtype, layout),
  outputs: (_, { layout }) => [{
    size: layout.blocks,
    dtype: "f32",
    what: `quantize: ${layout.blocks} block scales`,
  }],
  specialise: ([w], { layout }) => quantSpec(layout, w.dtype),
  uniforms: ({ layout }) => ({ size: layout.size, block: layout.block, blocks: layout.blocks }),
  geometry: ({ layout }) => ({ elements: layout.blocks }),
  reference: ([w], { layout }) => [quantScales(w, layout)],
};

/** Step 2: the packed words, one invocation per code word and per scale (copied after the codes). */
export const QUANT_PACK: KernelRecord<QuantArgs> = {
  name: "quant_pack",
  template: "quant_pack",
  includes: ["quant_codes"],
  bindings: [
    { name: "w", access: "read" },
    { name: "scales", access: "read" },
    { name: "packed", access: "write" },
  ],
  params: [
    { name: "size", type: "u32" },
    { name: "block", type: "u32" },
    { name: "code_words", type: "u32" },
    { name: "words", type: "u32" },
  ],
  check: ([w, s], { layout }) => {
    checkInput("quantPack", w.size, w.dtype, layout);
    if (s.size !== layout.blocks) {
      throw new ShapeError(`quantPack: ${s.size} scales, expected ${layout.blocks}`);
    }
  },
  outputs: (_, { layout }) => [{
    size: layout.words,
    dtype: "f32",
    what: `quantize: packed ${layout.scheme} weight of ${layout.size} elements (${layout.words} words)`,
  }],
  specialise: ([w], { layout }) => quantSpec(layout, w.dtype),
  uniforms: ({ layout }) => ({
    size: layout.size,
    block: layout.block,
    code_words: layout.codeWords,
    words: layout.words,
  }),
  geometry: ({ layout }) => ({ elements: layout.words }),
  // The codes from the given scales (the kernel reads them from step 1, not recomputing them).
  reference: ([w, scales], { layout }) => {
    const out = quantizeValues(w, layout);
    wordsOf(out).set(wordsOf(scales), layout.codeWords);
    return [out];
  },
};

/** Arguments of {@link DEQUANTIZE}: the layout and the output dtype. */
export interface DequantizeArgs extends QuantArgs {
  dtype: DType;
}

/** The dequantized weight [size] in `dtype` (for merges, tests and the composed path). */
export const DEQUANTIZE: KernelRecord<DequantizeArgs> = {
  name: "dequantize",
  template: "dequantize",
  includes: ["quant_codes"],
  bindings: [{ name: "packed", access: "read" }, { name: "w", access: "write" }],
  params: [
    { name: "size", type: "u32" },
    { name: "block", type: "u32" },
    { name: "code_words", type: "u32" },
  ],
  check: ([packed], { layout }) => {
    if (packed.size !== layout.words || packed.dtype !== "f32") {
      throw new ShapeError(
        `dequantize: packed storage has ${packed.size} ${packed.dtype} elements, expected ${layout.words} f32 words`,
      );
    }
  },
  outputs: (_, { layout, dtype }) => [{
    size: layout.size,
    dtype,
    what: `dequantize: weight of ${layout.size} elements (${dtype})`,
  }],
  specialise: (_, { layout, dtype }) => ({ T: dtype, QUANT: layout.scheme }),
  uniforms: ({ layout }) => ({ size: layout.size, block: layout.block, code_words: layout.codeWords }),
  geometry: ({ layout }) => ({ elements: layout.size }),
  reference: ([packed], { layout }) => [dequantizeValues(packed, layout)],
};
