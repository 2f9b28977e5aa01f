/**
 * Scoring a model on held-out data: exact-match accuracy of greedy completions (prompt/completion data)
 * and mean token loss (any data). Both run without gradients, in chunks that bound memory.
 * @module
 */
import { type LlamaForCausalLM, noGrad, tidy, type TrainBatch } from "../../mod.ts";
import { completionIds, type EncodedSequence, padBatch, promptIds } from "./data.ts";
import { exactMatchAccuracy } from "./tasks.ts";

/** Prompts per generate call and sequences per loss forward. */
const CHUNK = 64;

/** Greedy continuations of each prompt (new tokens only), at most `maxNewTokens` each, stopping at EOS. */
export async function generateContinuations(
  model: LlamaForCausalLM,
  prompts: readonly number[][],
  maxNewTokens: number,
  eosTokenId: number | null,
): Promise<number[][]> {
  model.eval();
  const out: number[][] = [];
  for (let i = 0; i < prompts.length; i += CHUNK) {
    const chunk = prompts.slice(i, i + CHUNK);
    const rows = await model.generate(chunk, {
      maxNewTokens,
      ...(eosTokenId === null ? {} : { eosTokenId }),
    });
    rows.forEach((row, j) => out.push(row.slice(chunk[j].length)));
  }
  return out;
}

/** Held-out accuracy and what the model generated for each sequence. */
export interface AccuracyReport {
  accuracy: number;
  continuations: number[][];
}

/** Exact-match accuracy of greedy completions of encoded prompt/completion sequences. */
export async function exactMatchOn(
  model: LlamaForCausalLM,
  sequences: readonly EncodedSequence[],
  eosTokenId: number | null,
): Promise<AccuracyReport> {
  const targets = sequences.map(completionIds);
  const maxNew = Math.max(...targets.map((t) => t.length));
  const continuations = await generateContinuations(model, sequences.map(promptIds), maxNew, eosTokenId);
  return { accuracy: exactMatchAccuracy(continuations, targets, eosTokenId), continuations };
}

/** Number of labelled positions the causal loss counts (labels shift left by one). */
function countTargets(batch: TrainBatch): number {
  let n = 0;
  for (const row of batch.labels as number[][]) {
    for (let i = 1; i < row.length; i++) if (row[i] !== -100) n++;
  }
  return n;
}

/** Mean loss per predicted token over `sequences` (padding and −100 labels excluded). */
export async function meanTokenLoss(
  model: LlamaForCausalLM,
  sequences: readonly EncodedSequence[],
  padTokenId: number,
): Promise<number> {
  model.eval();
  let total = 0, count = 0;
  for (let i = 0; i < sequences.length; i += CHUNK) {
    const batch = padBatch(sequences.slice(i, i + CHUNK), padTokenId);
    const n = countTargets(batch);
    if (n === 0) continue;
    // tidy frees the forward's intermediates; only the loss survives the scope.
    const loss = tidy(() => noGrad(() => model.forward(batch.inputIds, batch).loss!));
    total += (await loss.item()) * n;
    loss.dispose();
    count += n;
  }
  return count === 0 ? NaN : total / count;
}
