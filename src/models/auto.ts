/**
 * `AutoModelForCausalLM`: picks the model class from a checkpoint's own config.json
 * (`architectures`, else `model_type`), as transformers' auto class does.
 * @module
 */
import { ConfigError } from "../core/errors.ts";
import { joinPath, pathKind, readFileText } from "../io/fs.ts";
import { ARCHITECTURE_FAMILIES, type LlamaConfig, parseLlamaConfig } from "./config.ts";
import { LlamaForCausalLM, type LlamaModelOptions } from "./llama.ts";
import {
  Gemma3ForCausalLM,
  MistralForCausalLM,
  Phi3ForCausalLM,
  Qwen2ForCausalLM,
  Qwen3ForCausalLM,
} from "./families.ts";
import type { ModelSource } from "./weights.ts";
import type { ModelSourceWithGeneration } from "./generation_config.ts";

/** Every class the auto class can return. */
export type AutoCausalLM =
  | LlamaForCausalLM
  | MistralForCausalLM
  | Qwen2ForCausalLM
  | Qwen3ForCausalLM
  | Phi3ForCausalLM
  | Gemma3ForCausalLM;

/** The class for each architecture name of {@link ARCHITECTURE_FAMILIES}. */
const CLASSES: Readonly<Record<string, typeof LlamaForCausalLM>> = {
  LlamaForCausalLM,
  MistralForCausalLM,
  Qwen2ForCausalLM,
  Qwen3ForCausalLM,
  Phi3ForCausalLM,
  Gemma3ForCausalLM,
};

/** The class that builds `config` (its first architecture, as transformers' auto class picks). */
export function modelClassFor(config: LlamaConfig): typeof LlamaForCausalLM {
  const name = config.architectures[0];
  const cls = CLASSES[name];
  if (cls === undefined || !Object.hasOwn(ARCHITECTURE_FAMILIES, name)) {
    throw new ConfigError(`AutoModelForCausalLM: architecture ${JSON.stringify(name)} has no model class`);
  }
  return cls;
}

/** Options of {@link AutoModelForCausalLM.fromConfig}. */
export interface FromConfigOptions {
  /** Where parameters live (default: the default device). */
  device?: LlamaModelOptions["device"];
  /** Parameter dtype (default f32). */
  dtype?: LlamaModelOptions["dtype"];
  /** Seed of the random init. */
  seed?: number;
}

/**
 * Reads config.json of a directory source, or takes an object source's config; null when the directory
 * has no config.json (the class's own loader then reports what is missing, with its usual message).
 */
async function sourceConfig(source: ModelSource | ModelSourceWithGeneration): Promise<LlamaConfig | null> {
  if (typeof source === "string") {
    const path = joinPath(source, "config.json");
    if ((await pathKind(path)) !== "file") return null;
    return parseLlamaConfig(await readFileText(path));
  }
  if (source === null || typeof source !== "object" || !("config" in source)) {
    throw new ConfigError(
      `AutoModelForCausalLM.fromPretrained: source must be a directory path or { config, weights }, got ` +
        (source === null || typeof source !== "object"
          ? String(source)
          : `{ ${Object.keys(source).join(", ")} }`),
    );
  }
  return parseLlamaConfig(source.config);
}

/** transformers' `AutoModelForCausalLM`: the model class follows the checkpoint's config.json. */
export class AutoModelForCausalLM {
  private constructor() {}

  /**
   * Loads a checkpoint (a directory, or `{ config, weights, generationConfig? }`) with the class its
   * config names: Llama, Mistral, Qwen2, Qwen3, Phi-3 or Gemma 3 (text).
   * @throws {ConfigError} for an architecture or config field we do not implement (naming it)
   */
  static async fromPretrained(
    source: ModelSource | ModelSourceWithGeneration,
    options: LlamaModelOptions = {},
  ): Promise<AutoCausalLM> {
    const config = await sourceConfig(source);
    const cls = config === null ? LlamaForCausalLM : modelClassFor(config);
    return await cls.fromPretrained(source, options);
  }

  /**
   * A new model with random weights for `config` (a config.json object, its text, or a parsed config),
   * synchronously, like transformers' `from_config`.
   */
  static fromConfig(
    config: LlamaConfig | Record<string, unknown> | string,
    options: FromConfigOptions = {},
  ): AutoCausalLM {
    const parsed = typeof config === "object" && config !== null && "source" in config && "rope" in config
      ? config as LlamaConfig
      : parseLlamaConfig(config as Record<string, unknown> | string);
    const cls = modelClassFor(parsed);
    return new cls(parsed, options);
  }
}
