/**
 * Prompt/completion pairs into one training batch, as transformers' and TRL's completion-only data
 * collators make it: each row is the prompt (with the tokenizer's special tokens, such as BOS) then the
 * completion and EOS; labels repeat the ids except -100 over the prompt and the padding, so the loss is the
 * completion's alone; the attention mask is 1 on real tokens and 0 on padding.
 * @module
 */
import { ConfigError } from "../core/errors.ts";
import { checkOptionalBoolean, checkOptionKeys, showValue } from "../core/options.ts";

/** Labels with this value are left out of the loss (PyTorch's cross-entropy `ignore_index`). */
export const IGNORE_INDEX = -100;

/** What {@link collateCompletions} needs from a tokenizer (`PreTrainedTokenizer` has it all). */
export interface CollateTokenizer {
  /** Ids of `text`; `addSpecialTokens` adds what the tokenizer puts around a sequence (e.g. BOS). */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Appended to each completion (unless it already ends with it); null: nothing appended. */
  readonly eosTokenId: number | null;
  /** Fills the rows shorter than the longest; null falls back to the EOS id. */
  readonly padTokenId: number | null;
}

/** One training example: the model sees both parts and learns to produce the completion. */
export interface PromptCompletion {
  prompt: string;
  completion: string;
}

/** Names of {@link CollateOptions}. */
const COLLATE_OPTION_KEYS = ["maxLength", "padSide", "addEos", "padTokenId"] as const;

/** Options of {@link collateCompletions}. */
export interface CollateOptions {
  /** Cut each row to its first `maxLength` tokens (the end goes, as transformers truncates by default). */
  maxLength?: number;
  /** Where the padding goes: "right" (default; training) or "left". */
  padSide?: "left" | "right";
  /** Append the tokenizer's EOS to each completion so the model learns to stop (default true). */
  addEos?: boolean;
  /** The padding id, overriding the tokenizer's (and its EOS fallback). */
  padTokenId?: number;
}

/** A batch of {@link collateCompletions}: `train()` takes it as a batch as it is. */
export interface CompletionBatch {
  /** Token ids [batch, longest row], padded. */
  inputIds: number[][];
  /** 1 on real tokens, 0 on padding. */
  attentionMask: number[][];
  /** The ids, with -100 over prompt and padding tokens. */
  labels: number[][];
}

function checkId(value: unknown, what: string): void {
  if (!Number.isInteger(value) || (value as number) < 0) {
    throw new ConfigError(
      `collateCompletions: ${what} must be a non-negative integer token id, got ${showValue(value)}`,
    );
  }
}

/**
 * Tokenizes and pads prompt/completion pairs into `{ inputIds, attentionMask, labels }`: the prompt is
 * encoded with the tokenizer's special tokens, the completion without them and followed by EOS (`addEos`);
 * labels are -100 over the prompt and the padding. `maxLength` truncates each row from the end (a prompt
 * that fills it leaves that row with no trained token); `padSide` puts the padding right (default) or left.
 *
 * ```ts
 * const batch = collateCompletions(tokenizer, [{ prompt: "2+2=", completion: "4" }], { maxLength: 64 });
 * await train({ model, optimizer, batches: [batch], steps: 10 });
 * ```
 * @throws {ConfigError} for malformed pairs or options, or when there is no padding id to use
 */
export function collateCompletions(
  tokenizer: CollateTokenizer,
  pairs: readonly PromptCompletion[],
  options: CollateOptions = {},
): CompletionBatch {
  if (tokenizer === null || typeof tokenizer !== "object" || typeof tokenizer.encode !== "function") {
    throw new ConfigError(
      `collateCompletions: tokenizer must have encode(text, options), got ${showValue(tokenizer)}`,
    );
  }
  if (!Array.isArray(pairs) || pairs.length === 0) {
    throw new ConfigError(
      `collateCompletions: pairs must be a non-empty list of { prompt, completion }, got ${showValue(pairs)}`,
    );
  }
  pairs.forEach((p, i) => {
    if (
      p === null || typeof p !== "object" || typeof p.prompt !== "string" || typeof p.completion !== "string"
    ) {
      throw new ConfigError(
        `collateCompletions: pairs[${i}] must be { prompt: string, completion: string }, got ${showValue(p)}`,
      );
    }
  });
  const opts = checkOptionKeys(options, COLLATE_OPTION_KEYS, "collateCompletions") as CollateOptions;
  const padSide = opts.padSide ?? "right";
  if (padSide !== "left" && padSide !== "right") {
    throw new ConfigError(
      `collateCompletions: padSide must be "left" or "right", got ${showValue(opts.padSide)}`,
    );
  }
  if (opts.maxLength !== undefined && !(Number.isInteger(opts.maxLength) && opts.maxLength > 0)) {
    throw new ConfigError(
      `collateCompletions: maxLength must be a positive integer, got ${showValue(opts.maxLength)}`,
    );
  }
  checkOptionalBoolean(opts.addEos, "addEos", "collateCompletions");
  if (opts.padTokenId !== undefined) checkId(opts.padTokenId, "padTokenId");
  const eos = tokenizer.eosTokenId;
  const pad = opts.padTokenId ?? tokenizer.padTokenId ?? eos;
  if (pad === null || pad === undefined) {
    throw new ConfigError(
      `collateCompletions: the tokenizer has neither a pad nor an EOS token; pass { padTokenId } (any id: ` +
        `padding is masked out and never trained on)`,
    );
  }
  checkId(pad, "the padding id");
  const addEos = (opts.addEos ?? true) && eos !== null;
  const rows = pairs.map((pair) => {
    const prompt = tokenizer.encode(pair.prompt, { addSpecialTokens: true });
    const completion = tokenizer.encode(pair.completion, { addSpecialTokens: false });
    if (addEos && completion[completion.length - 1] !== eos) completion.push(eos as number);
    let ids = [...prompt, ...completion];
    let labels = [...prompt.map(() => IGNORE_INDEX), ...completion];
    if (opts.maxLength !== undefined && ids.length > opts.maxLength) {
      ids = ids.slice(0, opts.maxLength);
      labels = labels.slice(0, opts.maxLength);
    }
    return { ids, labels };
  });
  const width = Math.max(...rows.map((r) => r.ids.length));
  const padRow = (row: number[], fill: number): number[] => {
    const padding = new Array<number>(width - row.length).fill(fill);
    return padSide === "right" ? [...row, ...padding] : [...padding, ...row];
  };
  return {
    inputIds: rows.map((r) => padRow(r.ids, pad)),
    attentionMask: rows.map((r) => padRow(r.ids.map(() => 1), 0)),
    labels: rows.map((r) => padRow(r.labels, IGNORE_INDEX)),
  };
}
