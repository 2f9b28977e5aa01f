/**
 * Text ↔ token ids for the demo. A checkpoint's own `tokenizer.json` (with `tokenizer_config.json` when
 * present) is read by the library's `AutoTokenizer`; a checkpoint without one, such as the shipped base
 * model, uses the byte tokenizer: one token per UTF-8 byte, id = byte value.
 * @module
 */
import { ConfigError, FormatError, type LlamaConfig, PreTrainedTokenizer } from "../../mod.ts";
import { isFile, joinPath } from "./files.ts";

/** What the demo needs from a tokenizer. */
export interface TextTokenizer {
  /** A short description for the demo's output. */
  readonly description: string;
  /** Ends a completion and stops generation; null when the model has none. */
  readonly eosTokenId: number | null;
  /** Fills the unused tail of shorter rows in a batch (masked out, never trained on). */
  readonly padTokenId: number;
  /** Ids of `text`; `addSpecialTokens` adds what the tokenizer puts around a sequence (e.g. BOS). */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Text of `ids`, special tokens left out. */
  decode(ids: readonly number[]): string;
}

/** One token per UTF-8 byte: any text round-trips, and a vocabulary of 256 covers it. */
export class ByteTokenizer implements TextTokenizer {
  readonly description = "byte tokenizer (UTF-8 bytes, vocabulary 256)";
  readonly eosTokenId: number | null;
  readonly padTokenId: number;
  #encoder = new TextEncoder();
  #decoder = new TextDecoder();

  /** @param eosTokenId the byte that ends a completion (the demo's models use 10, "\n") */
  constructor(eosTokenId: number | null) {
    if (eosTokenId !== null && !(Number.isInteger(eosTokenId) && eosTokenId >= 0 && eosTokenId < 256)) {
      throw new ConfigError(`ByteTokenizer: eos token id ${eosTokenId} is not a byte (0-255)`);
    }
    this.eosTokenId = eosTokenId;
    this.padTokenId = eosTokenId ?? 0;
  }

  encode(text: string): number[] {
    return Array.from(this.#encoder.encode(text));
  }

  decode(ids: readonly number[]): string {
    return this.#decoder.decode(Uint8Array.from(ids));
  }
}

/** The first id of the config's `eos_token_id` (one id or a list), or null. */
function configEos(config: LlamaConfig): number | null {
  const eos = config.eosTokenId;
  return Array.isArray(eos) ? eos[0] ?? null : eos;
}

/** A Hugging Face `tokenizer.json` through the library's {@link PreTrainedTokenizer}. */
export class HfTokenizer implements TextTokenizer {
  readonly description: string;
  readonly eosTokenId: number | null;
  readonly padTokenId: number;
  #tokenizer: PreTrainedTokenizer;

  /**
   * @param tokenizerJson the parsed tokenizer.json
   * @param tokenizerConfig the parsed tokenizer_config.json, or {} without one
   * @param config the model's config: its eos/pad ids win over the tokenizer's, and every id the
   *   tokenizer can produce must be below its vocab_size
   * @throws {FormatError} when the package cannot build the tokenizer
   * @throws {ConfigError} when the tokenizer's vocabulary does not fit the model
   */
  constructor(tokenizerJson: unknown, tokenizerConfig: Record<string, unknown>, config: LlamaConfig) {
    if (tokenizerJson === null || typeof tokenizerJson !== "object" || Array.isArray(tokenizerJson)) {
      throw new FormatError(`tokenizer.json must hold a JSON object`);
    }
    this.#tokenizer = new PreTrainedTokenizer(
      tokenizerJson as Record<string, unknown>,
      tokenizerConfig,
      "tokenizer.json",
    );
    const maxId = this.#tokenizer.vocabSize - 1;
    if (maxId >= config.vocabSize) {
      throw new ConfigError(
        `tokenizer.json: the tokenizer has token id ${maxId}, beyond the model's vocab_size ${config.vocabSize}`,
      );
    }
    this.eosTokenId = configEos(config) ?? this.#tokenizer.eosTokenId;
    this.padTokenId = config.padTokenId ?? this.#tokenizer.padTokenId ?? this.eosTokenId ?? 0;
    this.description = `tokenizer.json (${this.#tokenizer.vocabSize} tokens, @huggingface/tokenizers)`;
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.#tokenizer.encode(text, { addSpecialTokens: opts.addSpecialTokens ?? false });
  }

  decode(ids: readonly number[]): string {
    return this.#tokenizer.decode([...ids], { skipSpecialTokens: true });
  }
}

async function readJson(path: string): Promise<unknown> {
  const text = await Deno.readTextFile(path);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FormatError(`${path} is not valid JSON (${(e as Error).message})`);
  }
}

/**
 * The tokenizer of the checkpoint in `dir`: its `tokenizer.json` (+ `tokenizer_config.json`), or the
 * byte tokenizer when there is none and the model's vocabulary holds every byte.
 * @throws {ConfigError} without tokenizer.json when vocab_size is below 256
 */
export async function loadTokenizer(dir: string, config: LlamaConfig): Promise<TextTokenizer> {
  const tokenizerPath = joinPath(dir, "tokenizer.json");
  if (!(await isFile(tokenizerPath))) {
    if (config.vocabSize < 256) {
      throw new ConfigError(
        `${dir} has no tokenizer.json, and its vocab_size ${config.vocabSize} is below the 256 the byte ` +
          `tokenizer needs; add the model's tokenizer.json`,
      );
    }
    return new ByteTokenizer(configEos(config));
  }
  const json = await readJson(tokenizerPath);
  const configPath = joinPath(dir, "tokenizer_config.json");
  let tokenizerConfig: Record<string, unknown> = {};
  if (await isFile(configPath)) {
    const parsed = await readJson(configPath);
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new FormatError(`${configPath} must hold a JSON object`);
    }
    tokenizerConfig = parsed as Record<string, unknown>;
  }
  return new HfTokenizer(json, tokenizerConfig, config);
}
