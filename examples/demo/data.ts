/**
 * Training data for the demo: users' files (JSONL prompt/completion pairs or plain text) read and
 * checked with one-line errors, token sequences padded into batches, and a held-out share kept apart.
 * Prompt/completion pairs train on the completion only (prompt labels are −100, as in transformers);
 * plain text trains as next-token prediction on windows of `seqLen` tokens.
 * @module
 */
import { collateCompletions, type TrainBatch } from "../../mod.ts";
import { UsageError } from "./cli.ts";
import { isDirectory } from "./files.ts";
import type { SeededRandom } from "./rng.ts";
import type { PromptCompletion } from "./tasks.ts";
import type { TextTokenizer } from "./tokenizer.ts";

/** What a data file holds. */
export type DataFile =
  | { kind: "pairs"; pairs: PromptCompletion[] }
  | { kind: "text"; text: string };

/** A tokenized training sequence: ids and their labels (−100: not trained on). */
export interface EncodedSequence {
  ids: number[];
  labels: number[];
}

/** JSONL when the name says so or the first non-blank line is a JSON object; otherwise plain text. */
function looksLikeJsonl(path: string, text: string): boolean {
  if (path.toLowerCase().endsWith(".jsonl")) return true;
  const first = text.split("\n").find((l) => l.trim() !== "")?.trim() ?? "";
  if (!first.startsWith("{")) return false;
  try {
    const v = JSON.parse(first);
    return v !== null && typeof v === "object" && !Array.isArray(v);
  } catch {
    return false;
  }
}

/** Parses JSONL prompt/completion lines; any bad line is a UsageError naming its number. */
export function parseJsonl(text: string, source: string): PromptCompletion[] {
  const pairs: PromptCompletion[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    const where = `${source} line ${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new UsageError(`${where} is not valid JSON (${(e as Error).message})`);
    }
    const obj = v as Record<string, unknown>;
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      throw new UsageError(`${where} must be a JSON object {"prompt": ..., "completion": ...}`);
    }
    if (typeof obj.prompt !== "string" || typeof obj.completion !== "string") {
      throw new UsageError(`${where} needs string fields "prompt" and "completion"`);
    }
    if (obj.completion === "") throw new UsageError(`${where} has an empty completion (nothing to train on)`);
    pairs.push({ prompt: obj.prompt, completion: obj.completion });
  }
  if (pairs.length === 0) throw new UsageError(`${source} holds no prompt/completion lines`);
  return pairs;
}

/** Reads `--data`: a UsageError when the file is missing, unreadable, empty or malformed. */
export async function readDataFile(path: string): Promise<DataFile> {
  const source = `--data ${path}`;
  if (await isDirectory(path)) throw new UsageError(`${source} is a directory, not a file`);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new UsageError(`${source} cannot be read (${why})`);
  }
  if (text.trim() === "") throw new UsageError(`${source} is empty`);
  if (looksLikeJsonl(path, text)) return { kind: "pairs", pairs: parseJsonl(text, source) };
  return { kind: "text", text };
}

/**
 * Tokenizes a pair with the library's `collateCompletions`: the prompt (with the tokenizer's special
 * tokens, such as BOS) then the completion followed by EOS when the tokenizer has one. Only completion and
 * EOS carry labels.
 */
export function encodePair(tokenizer: TextTokenizer, pair: PromptCompletion): EncodedSequence {
  const { inputIds, labels } = collateCompletions(tokenizer, [pair]);
  return { ids: inputIds[0], labels: labels[0] };
}

/** The completion part of {@link encodePair}'s result: what a model should generate after the prompt. */
export function completionIds(sequence: EncodedSequence): number[] {
  const first = sequence.labels.findIndex((l) => l !== -100);
  return first < 0 ? [] : sequence.ids.slice(first);
}

/** The prompt part of {@link encodePair}'s result. */
export function promptIds(sequence: EncodedSequence): number[] {
  const first = sequence.labels.findIndex((l) => l !== -100);
  return sequence.ids.slice(0, first < 0 ? sequence.ids.length : first);
}

/** Right-pads sequences into one batch; padding is masked out and carries label −100. */
export function padBatch(sequences: readonly EncodedSequence[], padTokenId: number): TrainBatch {
  const width = Math.max(...sequences.map((s) => s.ids.length));
  const pad = (row: number[], fill: number) => [...row, ...new Array(width - row.length).fill(fill)];
  return {
    inputIds: sequences.map((s) => pad(s.ids, padTokenId)),
    labels: sequences.map((s) => pad(s.labels, -100)),
    attentionMask: sequences.map((s) => pad(s.ids.map(() => 1), 0)),
  };
}

/** `seqLen` consecutive tokens from a random position of `ids`, trained on every token. */
export function randomWindow(ids: readonly number[], seqLen: number, rng: SeededRandom): EncodedSequence {
  const start = rng.int(Math.max(1, ids.length - seqLen + 1));
  const window = ids.slice(start, start + seqLen);
  return { ids: window, labels: [...window] };
}

/** Up to `count` consecutive non-overlapping windows of `seqLen` tokens (the last may be shorter). */
export function consecutiveWindows(ids: readonly number[], seqLen: number, count: number): EncodedSequence[] {
  const out: EncodedSequence[] = [];
  for (let start = 0; start < ids.length - 1 && out.length < count; start += seqLen) {
    const window = ids.slice(start, start + seqLen);
    if (window.length >= 2) out.push({ ids: window, labels: [...window] });
  }
  return out;
}

/**
 * Splits `items` into training and held-out parts: a seeded shuffle, then up to `maxHeldOut` items
 * (at most a fifth of them, at least one) held out. A single item cannot be split: UsageError.
 */
export function splitHeldOut<T>(
  items: readonly T[],
  maxHeldOut: number,
  rng: SeededRandom,
): { train: T[]; heldOut: T[] } {
  if (items.length < 2) {
    throw new UsageError(
      `--data needs at least 2 examples (one to train on, one to hold out), got ${items.length}`,
    );
  }
  const shuffled = [...items];
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
  }
  const held = Math.max(1, Math.min(maxHeldOut, Math.floor(items.length / 5)));
  return { heldOut: shuffled.slice(0, held), train: shuffled.slice(held) };
}
