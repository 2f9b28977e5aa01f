/**
 * Rotary position embeddings as transformers computes them: the inverse frequencies in float32 step by
 * step (each intermediate rounded like torch's float32 tensor ops), angles `inv_freq · position` rounded
 * to float32, and `q · cos + rotate_half(q) · sin` with rotate_half(x) = cat(−x₂, x₁) on the two halves.
 * Tables are plain host arrays (derived data, never part of a state dict) uploaded per forward.
 * @module
 */
import type { RopeParameters } from "./config.ts";
import { ConfigError } from "../core/errors.ts";

const f = Math.fround;

/**
 * transformers' `inv_freq` for `headDim` and the rope settings: `1 / theta^(2i / d)` (default), divided
 * by `factor` ("linear"), or with Llama 3's frequency-dependent smoothing ("llama3").
 */
export function ropeInverseFrequencies(headDim: number, rope: RopeParameters): Float32Array {
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    throw new ConfigError(`ropeInverseFrequencies: head_dim must be a positive even integer, got ${headDim}`);
  }
  const half = headDim / 2;
  const inv = new Float32Array(half);
  const base = f(rope.theta);
  for (let i = 0; i < half; i++) {
    // torch: arange(0, d, 2).float() / d, then base ** that, then 1.0 / that, each in float32.
    const exponent = f((2 * i) / headDim);
    inv[i] = f(1 / f(Math.pow(base, exponent)));
  }
  if (rope.ropeType === "linear") {
    const factor = f(rope.factor!);
    for (let i = 0; i < half; i++) inv[i] = f(inv[i] / factor);
  } else if (rope.ropeType === "llama3") {
    applyLlama3Scaling(inv, rope);
  }
  return inv;
}

/** transformers' `_compute_llama3_parameters`, applied to default frequencies in place. */
function applyLlama3Scaling(inv: Float32Array, rope: RopeParameters): void {
  const factor = f(rope.factor!);
  const low = rope.lowFreqFactor!, high = rope.highFreqFactor!;
  const oldContext = rope.originalMaxPositionEmbeddings!;
  // Python floats meet float32 tensors: each scalar is rounded to float32 inside the op.
  const lowWavelen = f(oldContext / low), highWavelen = f(oldContext / high);
  const twoPi = f(2 * Math.PI);
  const ctx = f(oldContext), lowF = f(low), span = f(high - low);
  for (let i = 0; i < inv.length; i++) {
    const wavelen = f(twoPi / inv[i]);
    const scaled = wavelen > lowWavelen ? f(inv[i] / factor) : inv[i];
    const smooth = f(f(f(ctx / wavelen) - lowF) / span);
    const smoothed = f(f(f(f(1 - smooth) * scaled) / factor) + f(smooth * scaled));
    const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
    inv[i] = medium ? smoothed : scaled;
  }
}

/** Host-side cos/sin tables, grown on demand, one row of `headDim` values per position. */
export class RopeTables {
  /** Width of each head. */
  readonly headDim: number;
  /** transformers' `inv_freq` in float32. */
  readonly invFreq: Float32Array;
  #cos = new Float32Array(0);
  #sin = new Float32Array(0);
  #rows = 0;

  /** Tables for heads of `headDim` with the given rope settings. */
  constructor(headDim: number, rope: RopeParameters) {
    this.headDim = headDim;
    this.invFreq = ropeInverseFrequencies(headDim, rope);
  }

  /** Makes sure rows 0..n−1 exist. */
  #grow(n: number): void {
    if (n <= this.#rows) return;
    const rows = Math.max(n, this.#rows * 2, 64);
    const d = this.headDim, half = d / 2;
    const cos = new Float32Array(rows * d), sin = new Float32Array(rows * d);
    cos.set(this.#cos);
    sin.set(this.#sin);
    for (let p = this.#rows; p < rows; p++) {
      for (let i = 0; i < half; i++) {
        const angle = f(this.invFreq[i] * p);
        const c = Math.cos(angle), s = Math.sin(angle);
        cos[p * d + i] = c;
        cos[p * d + half + i] = c;
        sin[p * d + i] = s;
        sin[p * d + half + i] = s;
      }
    }
    this.#cos = cos;
    this.#sin = sin;
    this.#rows = rows;
  }

  /**
   * cos and sin for each position of `positions` (row-major, any shape), laid out as
   * [...positions shape, headDim].
   */
  gather(positions: ArrayLike<number>): { cos: Float32Array; sin: Float32Array } {
    let maxPos = 0;
    for (let i = 0; i < positions.length; i++) {
      const p = positions[i];
      if (!Number.isInteger(p) || p < 0) {
        throw new ConfigError(`RopeTables: positions must be non-negative integers, got ${p} at index ${i}`);
      }
      maxPos = Math.max(maxPos, p);
    }
    this.#grow(maxPos + 1);
    const d = this.headDim;
    const cos = new Float32Array(positions.length * d), sin = new Float32Array(positions.length * d);
    for (let i = 0; i < positions.length; i++) {
      const p = positions[i];
      cos.set(this.#cos.subarray(p * d, p * d + d), i * d);
      sin.set(this.#sin.subarray(p * d, p * d + d), i * d);
    }
    return { cos, sin };
  }
}

/**
 * The [d, d] matrix R with x · R = rotate_half(x) = cat(−x[d/2:], x[:d/2]). Every column has a single
 * ±1, so the product is exact in any float format; it lets rotate_half run as one batched matmul on any
 * device without slicing.
 */
export function rotateHalfMatrix(d: number): Float32Array {
  const half = d / 2;
  const r = new Float32Array(d * d);
  for (let j = 0; j < half; j++) {
    r[(j + half) * d + j] = -1; // out[j] = −x[j + d/2]
    r[j * d + (j + half)] = 1; // out[j + d/2] = x[j]
  }
  return r;
}
