/**
 * A small seeded random stream for the demo's data (task samples, batch order): the same seed gives the
 * same data on every runtime, so a resumed run and a test see exactly what the first run saw.
 * @module
 */

/** mulberry32: 32-bit state, good enough to draw digits and indices, and trivially reproducible. */
export class SeededRandom {
  #state: number;

  /** @param seed any integer; equal seeds give equal streams */
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** A stream for one (seed, step) pair, so step s's batch does not depend on how many steps ran before. */
export function streamFor(seed: number, step: number): SeededRandom {
  return new SeededRandom(Math.imul(seed ^ 0x5bd1e995, 0x01000193) ^ Math.imul(step + 1, 0x9e3779b1));
}
