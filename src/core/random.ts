/**
 * Deterministic randomness. Host-side draws (init, randn, rand) come from a seeded xoshiro128**
 * stream; dropout masks come from a counter-based hash of (seed, element index) so that the CPU
 * reference and the WGSL kernels produce the very same mask without sharing state.
 * @module
 */

/** A seeded pseudo-random stream (xoshiro128**), seeded through splitmix32. */
export class Rng {
  #s0: number;
  #s1: number;
  #s2: number;
  #s3: number;

  constructor(seed: number) {
    let z = seed >>> 0;
    const next = () => {
      z = (z + 0x9e3779b9) >>> 0;
      let t = z;
      t = Math.imul(t ^ (t >>> 16), 0x21f0aaad);
      t = Math.imul(t ^ (t >>> 15), 0x735a2d97);
      return (t ^ (t >>> 15)) >>> 0;
    };
    this.#s0 = next();
    this.#s1 = next();
    this.#s2 = next();
    this.#s3 = next();
  }

  /** Next unsigned 32-bit integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.#s1, 5), 7), 9) >>> 0;
    const t = this.#s1 << 9;
    this.#s2 ^= this.#s0;
    this.#s3 ^= this.#s1;
    this.#s1 ^= this.#s2;
    this.#s0 ^= this.#s3;
    this.#s2 ^= t;
    this.#s3 = rotl(this.#s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    return (this.nextU32() * 2 ** 21 + (this.nextU32() >>> 11)) / 2 ** 53;
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    let u = this.uniform();
    while (u === 0) u = this.uniform();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.uniform());
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

let globalSeedCounter = 0x5eed;

/** A fresh seed for callers that gave none (dropout in training, random inits). */
export function nextSeed(): number {
  globalSeedCounter = (Math.imul(globalSeedCounter, 1664525) + 1013904223) >>> 0;
  return globalSeedCounter;
}

/** Resets the stream behind {@link nextSeed}, for reproducible runs. */
export function manualSeed(seed: number): void {
  globalSeedCounter = seed >>> 0;
}

/**
 * The dropout hash: a well-mixed u32 from (seed, index). The WGSL twin in `wgsl/common.wgsl`
 * must stay bit-identical: both use only 32-bit multiply, xor and shifts.
 */
export function dropoutHash(seed: number, index: number): number {
  let h = (index ^ Math.imul(seed >>> 0, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  h = Math.imul(h ^ (seed >>> 0), 0x85ebca6b) >>> 0;
  return (h ^ (h >>> 13)) >>> 0;
}

/** Keep an element when its hash is at least this threshold (p of the u32 range is dropped). */
export function dropoutThreshold(p: number): number {
  return Math.min(Math.floor(p * 4294967296), 4294967295) >>> 0;
}

/** The multiplier applied to kept elements, rounded to f32 as the kernels use it. */
export function dropoutKeepScale(p: number): number {
  return Math.fround(1 / (1 - p));
}
