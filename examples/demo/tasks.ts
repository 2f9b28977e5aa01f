/**
 * The demo's procedurally generated tasks. A digit-shift task writes a number and replaces each of its
 * digits d by (d + shift) mod 10: with shift 1 (task A, what the shipped base model was pretrained on)
 * `3917+1=4028`, with shift 2 (task B, what the demo fine-tunes) `3917+2=5139`. Both share the format
 * and the digit-copying the model learned; B only changes the per-digit mapping, which a low-rank update
 * learns in a few dozen steps, while the base model keeps answering as for A (≈ 0% on B).
 *
 * Numbers are split once and for all into training and held-out sets by a hash, so accuracy is always
 * measured on numbers no training step (pretraining included) has seen.
 * @module
 */
import { SeededRandom } from "./rng.ts";

/** A digit-shift task. */
export interface DigitShiftTask {
  /** "A" or "B" in the demo's messages. */
  name: string;
  /** Added to every digit, mod 10. */
  shift: number;
  /** Digits per number (numbers keep leading zeros). */
  digits: number;
}

/** One prompt and the completion a model should produce for it. */
export interface PromptCompletion {
  prompt: string;
  completion: string;
}

/** Ends every completion; the byte tokenizer's end-of-sequence token is this character's byte. */
export const END_OF_ANSWER = "\n";

/** What the shipped base model was pretrained on. */
export const TASK_A: DigitShiftTask = { name: "A", shift: 1, digits: 4 };

/** What the demo fine-tunes the base model to do. */
export const TASK_B: DigitShiftTask = { name: "B", shift: 2, digits: 4 };

/** Numbers a task draws from: [0, 10^digits). */
export function numberCount(task: DigitShiftTask): number {
  return 10 ** task.digits;
}

/** The example for `value` (0 ≤ value < 10^digits), e.g. `{ prompt: "3917+1=", completion: "4028\n" }`. */
export function shiftExample(task: DigitShiftTask, value: number): PromptCompletion {
  if (!Number.isInteger(value) || value < 0 || value >= numberCount(task)) {
    throw new RangeError(
      `shiftExample: value ${value} is not an integer in [0, ${numberCount(task)}) for ${task.digits} digits`,
    );
  }
  const digits = String(value).padStart(task.digits, "0");
  const shifted = [...digits].map((d) => String((Number(d) + task.shift) % 10)).join("");
  return { prompt: `${digits}+${task.shift}=`, completion: shifted + END_OF_ANSWER };
}

/**
 * Whether `value` belongs to the held-out set (about one number in five). A multiplicative hash rather
 * than a range, so held-out numbers cover every digit pattern.
 */
export function isHeldOut(value: number): boolean {
  let h = Math.imul(value ^ 0x27d4eb2d, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) % 5 === 0;
}

/** Every held-out number of `task`, ascending. */
function heldOutNumbers(task: DigitShiftTask): number[] {
  const pool: number[] = [];
  for (let v = 0; v < numberCount(task); v++) if (isHeldOut(v)) pool.push(v);
  return pool;
}

/** How many held-out numbers `task` has (the most {@link heldOutExamples} can return). */
export function heldOutPoolSize(task: DigitShiftTask): number {
  return heldOutNumbers(task).length;
}

/** `count` training examples (never held-out numbers; repeats allowed), drawn from `rng`. */
export function trainingExamples(task: DigitShiftTask, count: number, rng: SeededRandom): PromptCompletion[] {
  const out: PromptCompletion[] = [];
  while (out.length < count) {
    const v = rng.int(numberCount(task));
    if (!isHeldOut(v)) out.push(shiftExample(task, v));
  }
  return out;
}

/**
 * `count` distinct held-out examples, the same for the same seed. There are about 10^digits / 5 of them;
 * asking for more is a RangeError.
 */
export function heldOutExamples(task: DigitShiftTask, count: number, seed: number): PromptCompletion[] {
  const pool = heldOutNumbers(task);
  if (!Number.isInteger(count) || count < 1 || count > pool.length) {
    throw new RangeError(`heldOutExamples: count must be an integer in [1, ${pool.length}], got ${count}`);
  }
  // A partial Fisher–Yates shuffle: the first `count` entries are a uniform sample without repeats.
  const rng = new SeededRandom(seed);
  for (let i = 0; i < count; i++) {
    const j = i + rng.int(pool.length - i);
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  return pool.slice(0, count).map((v) => shiftExample(task, v));
}

/**
 * Whether a generated continuation equals the target token for token. The continuation is cut after its
 * first `eosTokenId` (what generation stops at); the target should end with that token too.
 */
export function isExactMatch(
  generated: readonly number[],
  target: readonly number[],
  eosTokenId: number | null,
): boolean {
  let end = generated.length;
  if (eosTokenId !== null) {
    const at = generated.indexOf(eosTokenId);
    if (at >= 0) end = at + 1;
  }
  if (end !== target.length) return false;
  for (let i = 0; i < end; i++) if (generated[i] !== target[i]) return false;
  return true;
}

/** Fraction of rows whose continuation is an exact match of its target (see {@link isExactMatch}). */
export function exactMatchAccuracy(
  generated: readonly (readonly number[])[],
  targets: readonly (readonly number[])[],
  eosTokenId: number | null,
): number {
  if (generated.length !== targets.length || targets.length === 0) {
    throw new RangeError(
      `exactMatchAccuracy: need equally many generations and targets (at least one), got ` +
        `${generated.length} and ${targets.length}`,
    );
  }
  let hits = 0;
  for (let i = 0; i < targets.length; i++) if (isExactMatch(generated[i], targets[i], eosTokenId)) hits++;
  return hits / targets.length;
}
