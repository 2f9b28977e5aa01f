/**
 * A checkpoint's `generation_config.json`: what transformers' `generate` takes its defaults from. We read
 * the token ids (EOS above all, so generation stops where the checkpoint's chat format ends a turn:
 * Qwen2.5-Instruct lists two EOS ids there while its config.json names one).
 * @module
 */
import { joinPath, pathKind, readFileText } from "../io/fs.ts";
import { FormatError } from "../core/errors.ts";
import type { LlamaConfig } from "./config.ts";
import type { ModelSource } from "./weights.ts";

/** `{ config, weights }` with the checkpoint's `generation_config.json` (object or text) beside them. */
export type ModelSourceWithGeneration = Exclude<ModelSource, string> & {
  /** generation_config.json as an object or its text; absent or null when the checkpoint has none. */
  generationConfig?: Record<string, unknown> | string | null;
};

/** The fields of `generation_config.json` we use, camelCased; `source` holds the whole object. */
export interface GenerationConfig {
  /** `eos_token_id`: one id, several, or null (undefined when the file does not set it). */
  eosTokenId?: number | number[] | null;
  /** `bos_token_id` (undefined when not set). */
  bosTokenId?: number | null;
  /** `pad_token_id` (undefined when not set). */
  padTokenId?: number | null;
  /** The JSON object as read. */
  source: Record<string, unknown>;
}

const isId = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0;

/**
 * Parses a `generation_config.json` object or text.
 * @throws {FormatError} for invalid JSON, a non-object, or token ids that are not non-negative integers
 *   (naming `where` and the field)
 */
export function parseGenerationConfig(
  input: Record<string, unknown> | string,
  where: string,
): GenerationConfig {
  let obj: unknown = input;
  if (typeof input === "string") {
    try {
      obj = JSON.parse(input);
    } catch (e) {
      throw new FormatError(`${where}: generation_config.json is not valid JSON (${(e as Error).message})`);
    }
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new FormatError(
      `${where}: generation_config.json must hold a JSON object, got ${JSON.stringify(obj)}`,
    );
  }
  const src = obj as Record<string, unknown>;
  const out: GenerationConfig = { source: structuredClone(src) };
  const single = (key: string): number | null | undefined => {
    if (!Object.hasOwn(src, key)) return undefined;
    const v = src[key];
    if (v === null || isId(v)) return v;
    throw new FormatError(
      `${where}: generation_config.json ${key} must be a non-negative integer or null, got ${
        JSON.stringify(v)
      }`,
    );
  };
  if (Object.hasOwn(src, "eos_token_id")) {
    const v = src.eos_token_id;
    if (Array.isArray(v)) {
      if (!v.every(isId)) {
        throw new FormatError(
          `${where}: generation_config.json eos_token_id must list non-negative integers, got ${
            JSON.stringify(v)
          }`,
        );
      }
      out.eosTokenId = [...v];
    } else {
      out.eosTokenId = single("eos_token_id");
    }
  }
  const bos = single("bos_token_id"), pad = single("pad_token_id");
  if (bos !== undefined) out.bosTokenId = bos;
  if (pad !== undefined) out.padTokenId = pad;
  return out;
}

/**
 * The generation config of a checkpoint: `generation_config.json` in a directory source, or the
 * `generationConfig` member of an object source; null when there is none.
 */
export async function readGenerationConfig(
  source: ModelSource | ModelSourceWithGeneration,
  where: string,
): Promise<GenerationConfig | null> {
  if (typeof source === "string") {
    const path = joinPath(source, "generation_config.json");
    if ((await pathKind(path)) !== "file") return null;
    return parseGenerationConfig(await readFileText(path), where);
  }
  if (source === null || typeof source !== "object" || !("generationConfig" in source)) return null;
  const g = (source as ModelSourceWithGeneration).generationConfig;
  return g === undefined || g === null ? null : parseGenerationConfig(g, where);
}

/**
 * transformers' default stop for `generate`: the generation config's `eos_token_id` when it sets one,
 * else config.json's; null when neither does.
 */
export function defaultEosTokenId(
  generation: GenerationConfig | null,
  config: LlamaConfig,
): number | number[] | null {
  const fromGeneration = generation?.eosTokenId;
  if (fromGeneration !== undefined && fromGeneration !== null) {
    return Array.isArray(fromGeneration) ? [...fromGeneration] : fromGeneration;
  }
  const fromConfig = config.eosTokenId;
  return Array.isArray(fromConfig) ? [...fromConfig] : fromConfig;
}
