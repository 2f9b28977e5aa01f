/**
 * Text in, text out: `generateText` encodes prompts (or chat conversations through the tokenizer's chat
 * template), runs a model's `generate`, and decodes only the new tokens of each row, what transformers'
 * text-generation pipeline returns with `return_full_text=False`.
 * @module
 */
import type { GenerateOptions } from "../models/generate.ts";
import type { ChatMessage } from "../tokenizers/chat_template.ts";
import { ConfigError } from "../core/errors.ts";
import { checkOptionalBoolean, showValue } from "../core/options.ts";

/** What {@link generateText} needs from a model: `generate` over token ids (every causal LM here has it). */
export interface TextGenerator {
  /** Each row's prompt followed by its new tokens. */
  generate(promptIds: number[][], opts: GenerateOptions): Promise<number[][]>;
}

/** What {@link generateText} needs from a tokenizer (`PreTrainedTokenizer` has it all). */
export interface GenerationTokenizer {
  /** Ids of `text`; `addSpecialTokens` adds what the tokenizer puts around a sequence (e.g. BOS). */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Text of `ids`; `skipSpecialTokens` leaves EOS, `<|im_end|>`, ... out. */
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  /** The conversation rendered by the checkpoint's chat template (needed for chat input only). */
  applyChatTemplate?(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): string;
}

/** Options of {@link generateText}: `generate`'s, and how the new tokens are decoded. */
export interface GenerateTextOptions extends GenerateOptions {
  /** Leave special tokens (the EOS that stopped a row, chat markers) out of the text; default true. */
  skipSpecialTokens?: boolean;
}

/** One prompt: plain text, or a conversation of chat messages. */
export type TextPrompt = string | ChatMessage[];

function isMessage(v: unknown): v is ChatMessage {
  return v !== null && typeof v === "object" && !Array.isArray(v) &&
    typeof (v as ChatMessage).role === "string" && typeof (v as ChatMessage).content === "string";
}

/** The prompts of `input` and whether the caller gave one (a string or one conversation) or a list. */
function promptsOf(input: unknown): { prompts: TextPrompt[]; single: boolean } {
  if (typeof input === "string") return { prompts: [input], single: true };
  if (!Array.isArray(input) || input.length === 0) {
    throw new ConfigError(
      `generateText: the prompt must be a string, a list of strings, a list of { role, content } chat ` +
        `messages, or a list of such conversations; got ${showValue(input)}`,
    );
  }
  if (input.every(isMessage)) return { prompts: [input], single: true };
  if (input.every((p) => typeof p === "string")) return { prompts: input, single: false };
  if (input.every((c) => Array.isArray(c) && c.length > 0 && c.every(isMessage))) {
    return { prompts: input, single: false };
  }
  const bad = input.findIndex((p) =>
    !(typeof p === "string" || isMessage(p) || (Array.isArray(p) && p.length > 0 && p.every(isMessage)))
  );
  const what = bad >= 0
    ? `element ${bad} is ${showValue(input[bad])}`
    : "it mixes strings, messages and lists";
  throw new ConfigError(
    `generateText: a list of prompts must hold only strings, only { role, content } messages (one ` +
      `conversation) or only non-empty lists of messages (several); ${what}`,
  );
}

/** The ids of one prompt: text with the tokenizer's special tokens, a conversation through its template. */
function encodePrompt(tokenizer: GenerationTokenizer, prompt: TextPrompt, index: number): number[] {
  let ids: number[];
  if (typeof prompt === "string") ids = tokenizer.encode(prompt, { addSpecialTokens: true });
  else {
    if (typeof tokenizer.applyChatTemplate !== "function") {
      throw new ConfigError(`generateText: chat messages need a tokenizer with applyChatTemplate`);
    }
    const text = tokenizer.applyChatTemplate(prompt, { addGenerationPrompt: true });
    ids = tokenizer.encode(text, { addSpecialTokens: false }); // the template wrote the special tokens
  }
  if (ids.length === 0) {
    throw new ConfigError(
      `generateText: prompt ${index} (${
        showValue(prompt)
      }) encodes to no tokens; generation needs at least one`,
    );
  }
  return ids;
}

/**
 * Generates a continuation of `prompt` and returns only the new text. `prompt` is a string, a list of
 * strings (one batch, left-padded by `generate`), a conversation of `{ role, content }` messages (rendered
 * by the tokenizer's chat template with the assistant turn opened, as `add_generation_prompt=True` does),
 * or a list of conversations. A string or one conversation gives a string; a list gives a list in order.
 * Options are `generate`'s (`maxNewTokens`, `greedy`, `temperature`, `topK`, `topP`, `seed`,
 * `eosTokenId`; a row stops at the model's EOS ids unless told otherwise), plus `skipSpecialTokens`.
 *
 * ```ts
 * const text = await generateText(model, tokenizer, [{ role: "user", content: "Hi!" }], { maxNewTokens: 16 });
 * ```
 * @throws {ConfigError} for a malformed prompt, a prompt of no tokens, or chat input without a chat template
 */
export async function generateText(
  model: TextGenerator,
  tokenizer: GenerationTokenizer,
  prompt: string,
  options: GenerateTextOptions,
): Promise<string>;
export async function generateText(
  model: TextGenerator,
  tokenizer: GenerationTokenizer,
  prompt: ChatMessage[],
  options: GenerateTextOptions,
): Promise<string>;
export async function generateText(
  model: TextGenerator,
  tokenizer: GenerationTokenizer,
  prompt: string[] | ChatMessage[][],
  options: GenerateTextOptions,
): Promise<string[]>;
export async function generateText(
  model: TextGenerator,
  tokenizer: GenerationTokenizer,
  prompt: string | string[] | ChatMessage[] | ChatMessage[][],
  options: GenerateTextOptions,
): Promise<string | string[]>;
export async function generateText(
  model: TextGenerator,
  tokenizer: GenerationTokenizer,
  prompt: string | string[] | ChatMessage[] | ChatMessage[][],
  options: GenerateTextOptions,
): Promise<string | string[]> {
  if (model === null || typeof model !== "object" || typeof model.generate !== "function") {
    throw new ConfigError(
      `generateText: model must have generate(promptIds, options), got ${showValue(model)}`,
    );
  }
  if (
    tokenizer === null || typeof tokenizer !== "object" || typeof tokenizer.encode !== "function" ||
    typeof tokenizer.decode !== "function"
  ) {
    throw new ConfigError(`generateText: tokenizer must have encode and decode, got ${showValue(tokenizer)}`);
  }
  if (options === null || typeof options !== "object") {
    throw new ConfigError(
      `generateText: options must be an object { maxNewTokens, ... }, got ${showValue(options)}`,
    );
  }
  const { skipSpecialTokens, ...generateOptions } = options;
  checkOptionalBoolean(skipSpecialTokens, "skipSpecialTokens", "generateText");
  const { prompts, single } = promptsOf(prompt);
  const ids = prompts.map((p, i) => encodePrompt(tokenizer, p, i));
  const rows = await model.generate(ids, generateOptions);
  const texts = rows.map((row, i) =>
    tokenizer.decode(row.slice(ids[i].length), { skipSpecialTokens: skipSpecialTokens ?? true })
  );
  return single ? texts[0] : texts;
}
