/**
 * The one exact codec between JavaScript numbers and the 16-bit float formats (IEEE binary16 "f16" and
 * bfloat16): bit patterns both ways, rounding to nearest-even straight from the double (never through an
 * f32 first, which could round twice). Used by safetensors files, the WebGPU upload/readback of f16
 * storage, and the CPU reference's f16 rounding.
 * @module
 */
/** Scratch space for reading a double's exponent field. */
const scratch = new DataView(new ArrayBuffer(8));

/** Rounds a non-negative number below 2^53 to the nearest integer, ties to even. */
function roundHalfEven(q: number): number {
  const f = Math.floor(q);
  const d = q - f; // exact: subtracting the integer part of a double drops bits, never rounds
  return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
}

/**
 * Encodes a number into a binary float with `mantBits` stored mantissa bits and exponent `bias`,
 * rounding the exact double (not an f32 rounding of it, which could round twice) to nearest-even.
 * Overflow goes to infinity, NaN to the canonical quiet NaN, and the sign (of -0 too) is kept.
 */
function encodeSmallFloat(x: number, mantBits: number, bias: number): number {
  const expMax = 2 * bias + 1; // all-ones exponent field: infinities and NaNs
  const signBit = x < 0 || Object.is(x, -0) ? 1 << (mantBits + bitLength(expMax)) : 0;
  if (Number.isNaN(x)) return (expMax << mantBits) | (1 << (mantBits - 1));
  const a = Math.abs(x);
  const minNormalExp = 1 - bias;
  if (a < 2 ** minNormalExp) {
    // Subnormal range: count in units of the smallest subnormal. Scaling by a power of two is exact,
    // and rounding up to 2^mantBits yields the smallest normal's encoding by itself.
    return signBit | roundHalfEven(a * 2 ** (mantBits - minNormalExp));
  }
  scratch.setFloat64(0, a);
  const e = ((scratch.getUint32(0) >>> 20) & 0x7ff) - 1023; // exact binary exponent (a is a normal double)
  if (e > bias) return signBit | (expMax << mantBits); // beyond the largest finite value, or infinite
  const r = roundHalfEven(a * 2 ** (mantBits - e)); // in [2^mantBits, 2^(mantBits+1)]
  // A mantissa that rounds up to 2^(mantBits+1) carries into the exponent; past the largest
  // exponent that carry lands exactly on infinity's encoding.
  return signBit | (((e + bias) << mantBits) + (r - (1 << mantBits)));
}

function bitLength(v: number): number {
  return 32 - Math.clz32(v);
}

/** Decodes the low 16 bits of `bits` as a float with the given field widths. */
function decodeSmallFloat(bits: number, mantBits: number, bias: number): number {
  const expMax = 2 * bias + 1;
  const mant = bits & ((1 << mantBits) - 1);
  const exp = (bits >>> mantBits) & expMax;
  const sign = bits & 0x8000 ? -1 : 1;
  if (exp === expMax) return mant === 0 ? sign * Infinity : NaN;
  if (exp === 0) return sign * mant * 2 ** (1 - bias - mantBits);
  return sign * ((1 << mantBits) + mant) * 2 ** (exp - bias - mantBits);
}

/**
 * The value of an IEEE 754 binary16 (f16) bit pattern; exact for every pattern, subnormals included.
 * @param bits the pattern in the low 16 bits
 */
export function f16BitsToNumber(bits: number): number {
  return decodeSmallFloat(bits, 10, 15);
}

/**
 * The binary16 (f16) bit pattern nearest to `x`, ties to even, rounding the double directly (so the
 * result matches `Math.f16round`). Values from 65520 up become infinity; NaN becomes 0x7e00.
 */
export function numberToF16Bits(x: number): number {
  return encodeSmallFloat(x, 10, 15);
}

/**
 * The value of a bfloat16 bit pattern (the top half of an f32); exact for every pattern.
 * @param bits the pattern in the low 16 bits
 */
export function bf16BitsToNumber(bits: number): number {
  return decodeSmallFloat(bits, 7, 127);
}

/**
 * The bfloat16 bit pattern nearest to `x`, ties to even, rounding the double directly. For f32 inputs
 * this equals PyTorch's float32 to bfloat16 conversion. NaN becomes 0x7fc0.
 */
export function numberToBf16Bits(x: number): number {
  return encodeSmallFloat(x, 7, 127);
}

/** `x` rounded to the nearest f16 value (ties to even, overflow to infinity), as a number. */
export function roundToF16(x: number): number {
  return f16BitsToNumber(numberToF16Bits(x));
}

/** f32 bit patterns of all 65536 f16 patterns, built on first use; copying bits keeps NaN payloads. */
let f16Table: Uint32Array | undefined;

/** The table of f32 bit patterns indexed by f16 pattern (65536 entries, built once). */
export function f16ToF32BitsTable(): Uint32Array {
  if (f16Table) return f16Table;
  const table = new Uint32Array(65536);
  const asFloat = new Float32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) {
      // NaN: widen the payload bit for bit (the quiet bit stays the top mantissa bit).
      table[h] = ((h & 0x8000) << 16) | 0x7f800000 | ((h & 0x3ff) << 13);
    } else {
      asFloat[h] = f16BitsToNumber(h);
    }
  }
  return (f16Table = table);
}
