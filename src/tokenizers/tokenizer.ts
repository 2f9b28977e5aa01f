/**
 * A checkpoint's tokenizer as transformers' `AutoTokenizer` loads it: `tokenizer.json` run by the field's
 * own JavaScript implementation (`@huggingface/tokenizers`), and `tokenizer_config.json` for the special
 * tokens (bos, eos, pad, unk) and the chat template.
 * @module
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { ConfigError, FormatError } from "../core/errors.ts";
import { joinPath, pathKind, readFileText } from "../io/fs.ts";
import { type ChatMessage, ChatTemplate } from "./chat_template.ts";

export type { ChatMessage } from "./chat_template.ts";

/** Where a tokenizer comes from: a checkpoint directory, or the two files' contents. */
export type TokenizerSource = string | {
  /** tokenizer.json as an object or its text. */
  tokenizerJson: Record<string, unknown> | string;
  /** tokenizer_config.json as an object or its text (special tokens, chat template); optional. */
  tokenizerConfig?: Record<string, unknown> | string | null;
};

/** Options of {@link PreTrainedTokenizer.encode}. */
export interface EncodeOptions {
  /** Add what the tokenizer puts around a sequence (e.g. Llama's `<s>`); default true, as transformers. */
  addSpecialTokens?: boolean;
}

/** Options of {@link PreTrainedTokenizer.decode}. */
export interface DecodeOptions {
  /** Leave special tokens (bos, eos, `<|im_start|>`, ...) out of the text; default false, as transformers. */
  skipSpecialTokens?: boolean;
}

/** Options of {@link PreTrainedTokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** End with the template's opening of an assistant turn (what generation continues); default false. */
  addGenerationPrompt?: boolean;
}

type Json = Record<string, unknown>;

function parseJsonObject(input: Json | string, file: string, where: string): Json {
  let obj: unknown = input;
  if (typeof input === "string") {
    try {
      obj = JSON.parse(input);
    } catch (e) {
      throw new FormatError(`${where}: ${file} is not valid JSON (${(e as Error).message})`);
    }
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new FormatError(
      `${where}: ${file} must hold a JSON object, got ${JSON.stringify(obj)?.slice(0, 80)}`,
    );
  }
  return obj as Json;
}

/** A token named in tokenizer_config.json: a plain string or an AddedToken object `{ content }`. */
function tokenName(config: Json, key: string, where: string): string | null {
  const value = Object.hasOwn(config, key) ? config[key] : undefined;
  if (value === undefined || value === null) return null;
  if (typeof value === "string") return value;
  if (typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  throw new FormatError(
    `${where}: tokenizer_config.json ${key} must be a token string or { content }, got ${
      JSON.stringify(value)
    }`,
  );
}

/** transformers' tokenizer over tokenizer.json + tokenizer_config.json. */
export class PreTrainedTokenizer {
  /** Beginning-of-sequence token id (tokenizer_config.json's `bos_token`), or null. */
  readonly bosTokenId: number | null;
  /** End-of-sequence token id (tokenizer_config.json's `eos_token`), or null. */
  readonly eosTokenId: number | null;
  /** Padding token id (tokenizer_config.json's `pad_token`), or null. */
  readonly padTokenId: number | null;
  /** Unknown-token id (tokenizer_config.json's `unk_token`), or null. */
  readonly unkTokenId: number | null;
  /** The token strings of the ids above (null where absent). */
  readonly specialTokens: {
    bos: string | null;
    eos: string | null;
    pad: string | null;
    unk: string | null;
  };
  /** Tokens in the vocabulary, added tokens included. */
  readonly vocabSize: number;
  /** tokenizer_config.json as read ({} without one). */
  readonly config: Json;
  #tokenizer: Tokenizer;
  #template: ChatTemplate | null;

  /**
   * @param tokenizerJson the parsed tokenizer.json
   * @param tokenizerConfig the parsed tokenizer_config.json ({} without one)
   * @param where the public call, for error messages
   * @throws {FormatError} when the package cannot build the tokenizer, or a special token of
   *   tokenizer_config.json is not in its vocabulary
   */
  constructor(tokenizerJson: Json, tokenizerConfig: Json = {}, where = "PreTrainedTokenizer") {
    try {
      this.#tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    } catch (e) {
      throw new FormatError(
        `${where}: @huggingface/tokenizers cannot read tokenizer.json (${(e as Error).message})`,
      );
    }
    this.config = structuredClone(tokenizerConfig);
    let maxId = -1;
    for (const id of this.#tokenizer.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    const special = (key: string): [string | null, number | null] => {
      const name = tokenName(tokenizerConfig, key, where);
      if (name === null) return [null, null];
      const id = this.#tokenizer.token_to_id(name);
      if (id === undefined) {
        throw new FormatError(
          `${where}: tokenizer_config.json ${key} ${JSON.stringify(name)} is not a token of tokenizer.json`,
        );
      }
      return [name, id];
    };
    const [bos, bosId] = special("bos_token"), [eos, eosId] = special("eos_token");
    const [pad, padId] = special("pad_token"), [unk, unkId] = special("unk_token");
    this.bosTokenId = bosId;
    this.eosTokenId = eosId;
    this.padTokenId = padId;
    this.unkTokenId = unkId;
    this.specialTokens = { bos, eos, pad, unk };
    const template = Object.hasOwn(tokenizerConfig, "chat_template") ? tokenizerConfig.chat_template : null;
    this.#template = template === null || template === undefined ? null : new ChatTemplate(template, where, {
      bos_token: bos ?? "",
      eos_token: eos ?? "",
      pad_token: pad ?? "",
      unk_token: unk ?? "",
    });
  }

  /** The ids of `text`; with `addSpecialTokens` (default) what tokenizer.json's post-processor adds. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== "string") {
      throw new ConfigError(`PreTrainedTokenizer.encode: text must be a string, got ${typeof text}`);
    }
    const add = opts.addSpecialTokens ?? true;
    return this.#tokenizer.encode(text, { add_special_tokens: add }).ids;
  }

  /** The text of `ids`; `skipSpecialTokens` leaves special tokens out (default false). */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    if (!Array.isArray(ids) || ids.some((id) => !Number.isInteger(id) || id < 0 || id >= this.vocabSize)) {
      const bad = Array.isArray(ids)
        ? ids.find((id) => !Number.isInteger(id) || id < 0 || id >= this.vocabSize)
        : ids;
      throw new ConfigError(
        `PreTrainedTokenizer.decode: ${
          JSON.stringify(bad)
        } is not a token id of this ${this.vocabSize}-token vocabulary`,
      );
    }
    if (ids.length === 0) return ""; // the package refuses an empty list; Python's decodes it to ""
    return this.#tokenizer.decode([...ids], { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  /** The token string of one id (undefined outside the vocabulary). */
  idToToken(id: number): string | undefined {
    return this.#tokenizer.id_to_token(id);
  }

  /** The id of one token string (undefined when it is not in the vocabulary). */
  tokenToId(token: string): number | undefined {
    return this.#tokenizer.token_to_id(token);
  }

  /** Whether tokenizer_config.json has a chat template. */
  get hasChatTemplate(): boolean {
    return this.#template !== null;
  }

  /**
   * The conversation as the checkpoint's chat template renders it (transformers' `apply_chat_template`
   * with `tokenize=False`); encode the result with `addSpecialTokens: false`, since the template writes
   * the special tokens itself.
   * @throws {ConfigError} without a chat template, for malformed messages, or when the template raises
   */
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
    if (this.#template === null) {
      throw new ConfigError(
        `PreTrainedTokenizer.applyChatTemplate: tokenizer_config.json has no chat_template (a base model's ` +
          `tokenizer usually has none; format the prompt yourself)`,
      );
    }
    return this.#template.render(messages, { addGenerationPrompt: opts.addGenerationPrompt ?? false });
  }
}

/** transformers' `AutoTokenizer`: a checkpoint's tokenizer from its own files. */
export class AutoTokenizer {
  private constructor() {}

  /**
   * Reads `tokenizer.json` (required) and `tokenizer_config.json` (optional) from a directory, or takes
   * their contents.
   * @throws {ConfigError} for a bad path or source; {@link FormatError} for unreadable files
   */
  static async fromPretrained(source: TokenizerSource): Promise<PreTrainedTokenizer> {
    const where = "AutoTokenizer.fromPretrained";
    if (typeof source === "string") {
      if ((await pathKind(source)) !== "dir") {
        throw new ConfigError(`${where}: ${source} is not a directory`);
      }
      const jsonPath = joinPath(source, "tokenizer.json");
      if ((await pathKind(jsonPath)) !== "file") {
        throw new ConfigError(
          `${where}: ${source} has no tokenizer.json (only fast tokenizers' tokenizer.json is supported, not ` +
            `sentencepiece .model or vocab/merges files)`,
        );
      }
      const configPath = joinPath(source, "tokenizer_config.json");
      const config = (await pathKind(configPath)) === "file"
        ? parseJsonObject(await readFileText(configPath), "tokenizer_config.json", where)
        : {};
      return new PreTrainedTokenizer(
        parseJsonObject(await readFileText(jsonPath), "tokenizer.json", where),
        config,
        where,
      );
    }
    if (source === null || typeof source !== "object" || !("tokenizerJson" in source)) {
      throw new ConfigError(
        `${where}: source must be a directory path or { tokenizerJson, tokenizerConfig? }, got ` +
          (source === null || typeof source !== "object"
            ? String(source)
            : `{ ${Object.keys(source).join(", ")} }`),
      );
    }
    const config = source.tokenizerConfig === undefined || source.tokenizerConfig === null
      ? {}
      : parseJsonObject(source.tokenizerConfig, "tokenizer_config.json", where);
    return new PreTrainedTokenizer(
      parseJsonObject(source.tokenizerJson, "tokenizer.json", where),
      config,
      where,
    );
  }
}
