/**
 * Chat templates: the Jinja template in a checkpoint's `tokenizer_config.json`, rendered with the field's
 * own JavaScript Jinja (`@huggingface/jinja`) and the variables transformers' `apply_chat_template`
 * passes (`messages`, `add_generation_prompt`, the special tokens' strings).
 * @module
 */
import { Template } from "@huggingface/jinja";
import { ConfigError, FormatError } from "../core/errors.ts";

/** One turn of a conversation. */
export interface ChatMessage {
  /** "system", "user", "assistant" (or what the template knows, e.g. "tool"). */
  role: string;
  /** The turn's text. */
  content: string;
}

/** A parsed chat template. */
export class ChatTemplate {
  #template: Template;
  #specials: Record<string, string>;

  /**
   * @param source tokenizer_config.json's `chat_template`: a string, or the list of `{ name, template }`
   *   that some checkpoints carry (the one named "default" is used, as transformers does)
   * @param where the public call, for error messages
   * @param specials `bos_token`, `eos_token`, ... as the template sees them
   * @throws {FormatError} when the template is neither form or does not parse
   */
  constructor(source: unknown, where: string, specials: Record<string, string>) {
    let text: unknown = source;
    if (Array.isArray(source)) {
      const named = source.find((t) =>
        t && typeof t === "object" && (t as { name?: unknown }).name === "default"
      );
      text = (named as { template?: unknown } | undefined)?.template;
    }
    if (typeof text !== "string") {
      throw new FormatError(
        `${where}: tokenizer_config.json chat_template must be a string or a list holding a "default" ` +
          `{ name, template }, got ${JSON.stringify(source)?.slice(0, 80)}`,
      );
    }
    try {
      this.#template = new Template(text);
    } catch (e) {
      throw new FormatError(
        `${where}: tokenizer_config.json chat_template does not parse (${(e as Error).message})`,
      );
    }
    this.#specials = { ...specials };
  }

  /**
   * The rendered conversation.
   * @throws {ConfigError} for malformed messages, or when the template itself raises (e.g. roles that
   *   do not alternate)
   */
  render(messages: ChatMessage[], opts: { addGenerationPrompt: boolean }): string {
    const op = "PreTrainedTokenizer.applyChatTemplate";
    if (!Array.isArray(messages) || messages.length === 0) {
      throw new ConfigError(`${op}: messages must be a non-empty list of { role, content }`);
    }
    messages.forEach((m, i) => {
      if (
        m === null || typeof m !== "object" || typeof m.role !== "string" || typeof m.content !== "string"
      ) {
        throw new ConfigError(
          `${op}: message ${i} must be { role: string, content: string }, got ${
            JSON.stringify(m)?.slice(0, 80)
          }`,
        );
      }
    });
    try {
      return this.#template.render({
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: opts.addGenerationPrompt,
        ...this.#specials,
      });
    } catch (e) {
      throw new ConfigError(`${op}: tokenizer_config.json's chat_template raised: ${(e as Error).message}`);
    }
  }
}
