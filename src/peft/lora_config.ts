/**
 * `LoraConfig`: Hugging Face PEFT's LoRA config under PEFT's own names (camelCased) and defaults, for
 * {@link getPeftModel} and `PeftModel` (peft_model.ts). The seed's `PeftConfig` (nemo_config.ts) keeps NeMo
 * AutoModel's names and defaults; the two never share matching rules: this one matches PEFT's way (see
 * adapter_config.ts).
 * @module
 */
import { ConfigError, FormatError } from "../core/errors.ts";
import { checkOptionKeys } from "../core/options.ts";
import { type AdapterConfig, parseAdapterConfig } from "./adapter_config.ts";
import type { PeftInitLoraWeights } from "./lora_linear.ts";

/** Options of {@link LoraConfig}: PEFT's `LoraConfig` fields, camelCased. */
export interface LoraConfigOptions {
  /** Rank (PEFT's default 8). */
  r?: number;
  /** Scale numerator: scale = loraAlpha / r, or loraAlpha / √r with useRslora (default 8). */
  loraAlpha?: number;
  /** Dropout on the input of lora_A while training (default 0). */
  loraDropout?: number;
  /**
   * A list (each entry matches a module name exactly or as a ".suffix"), a regex string matched against
   * the whole name, or "all-linear". Left out: PEFT's default for the model type (q_proj and v_proj for
   * Llama, Mistral, Qwen2, Qwen3, Gemma 3).
   */
  targetModules?: string[] | string | null;
  /** Modules never adapted, in the same forms as targetModules. */
  excludeModules?: string[] | string | null;
  /** Per-module rank: keys are regexes matched against a name's dotted suffixes, first match wins. */
  rankPattern?: Record<string, number>;
  /** Per-module alpha, keyed like rankPattern. */
  alphaPattern?: Record<string, number>;
  /** rsLoRA: scale = alpha / √r (default false). */
  useRslora?: boolean;
  /** PEFT's init_lora_weights: true (default), false or "gaussian". */
  initLoraWeights?: PeftInitLoraWeights;
  /** Bookkeeping, written to adapter_config.json: PEFT's task type ("CAUSAL_LM", ...). */
  taskType?: string | null;
  /** Bookkeeping: the base model the adapter belongs to. */
  baseModelNameOrPath?: string | null;
  /** Bookkeeping: the base model's revision. */
  revision?: string | null;
  /** Whether the adapter is for inference only (PEFT writes true when saving). */
  inferenceMode?: boolean;
}

const OPTION_KEYS = [
  "r",
  "loraAlpha",
  "loraDropout",
  "targetModules",
  "excludeModules",
  "rankPattern",
  "alphaPattern",
  "useRslora",
  "initLoraWeights",
  "taskType",
  "baseModelNameOrPath",
  "revision",
  "inferenceMode",
] as const;

/** PEFT's default target modules per `model_type` (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING). */
const DEFAULT_TARGETS: Record<string, string[]> = {
  llama: ["q_proj", "v_proj"],
  mistral: ["q_proj", "v_proj"],
  qwen2: ["q_proj", "v_proj"],
  qwen3: ["q_proj", "v_proj"],
  gemma3_text: ["q_proj", "v_proj"],
  phi3: ["qkv_proj"],
};

const copyList = (v: string[] | string | null | undefined): string[] | string | null =>
  v === undefined || v === null ? null : typeof v === "string" ? v : [...v];

/** PEFT's LoRA config (see {@link LoraConfigOptions}); immutable once made. */
export class LoraConfig {
  readonly r: number;
  readonly loraAlpha: number;
  readonly loraDropout: number;
  readonly targetModules: string[] | string | null;
  readonly excludeModules: string[] | string | null;
  readonly rankPattern: Readonly<Record<string, number>>;
  readonly alphaPattern: Readonly<Record<string, number>>;
  readonly useRslora: boolean;
  readonly initLoraWeights: PeftInitLoraWeights;
  readonly taskType: string | null;
  readonly baseModelNameOrPath: string | null;
  readonly revision: string | null;
  readonly inferenceMode: boolean;

  /** Validates every option (a ConfigError names the bad one) and fills in PEFT's defaults. */
  constructor(options: LoraConfigOptions = {}) {
    const o = checkOptionKeys(options, OPTION_KEYS, "LoraConfig") as LoraConfigOptions;
    this.r = o.r ?? 8;
    this.loraAlpha = o.loraAlpha ?? 8;
    this.loraDropout = o.loraDropout ?? 0;
    this.targetModules = copyList(o.targetModules);
    this.excludeModules = copyList(o.excludeModules);
    this.rankPattern = Object.freeze({ ...(o.rankPattern ?? {}) });
    this.alphaPattern = Object.freeze({ ...(o.alphaPattern ?? {}) });
    this.useRslora = o.useRslora ?? false;
    this.initLoraWeights = o.initLoraWeights ?? true;
    this.taskType = o.taskType ?? null;
    this.baseModelNameOrPath = o.baseModelNameOrPath ?? null;
    this.revision = o.revision ?? null;
    this.inferenceMode = o.inferenceMode ?? false;
    if (
      this.initLoraWeights !== true && this.initLoraWeights !== false && this.initLoraWeights !== "gaussian"
    ) {
      throw new ConfigError(
        `LoraConfig: initLoraWeights ${
          JSON.stringify(this.initLoraWeights)
        } is not supported here (true, false or "gaussian")`,
      );
    }
    for (
      const [k, v] of [["taskType", this.taskType], ["baseModelNameOrPath", this.baseModelNameOrPath], [
        "revision",
        this.revision,
      ]] as const
    ) {
      if (v !== null && typeof v !== "string") {
        throw new ConfigError(`LoraConfig: ${k} must be a string or null, got ${JSON.stringify(v)}`);
      }
    }
    if (typeof this.inferenceMode !== "boolean") {
      throw new ConfigError(
        `LoraConfig: inferenceMode must be a boolean, got ${JSON.stringify(this.inferenceMode)}`,
      );
    }
    // The file parser holds every value rule (ranks, alphas, dropout range, regex syntax, selector forms).
    this.adapterConfig();
    Object.freeze(this);
  }

  /**
   * A config from an `adapter_config.json` object (or its text) as PEFT writes it: every field PEFT 0.21
   * writes is accepted, bookkeeping ones (peft_type, auto_mapping, peft_version, ...) included; options
   * that change the numbers in ways not implemented here (DoRA, lora_bias, modules_to_save, ...) are a
   * ConfigError naming the field unless switched off.
   */
  static fromDict(dict: Record<string, unknown> | string): LoraConfig {
    let raw: Record<string, unknown>;
    try {
      raw = typeof dict === "string" ? JSON.parse(dict) : dict;
    } catch (e) {
      throw new FormatError(`LoraConfig.fromDict: malformed JSON (${(e as Error).message})`);
    }
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      throw new ConfigError(`LoraConfig.fromDict: expected an object, got ${JSON.stringify(raw)}`);
    }
    parseAdapterConfig(raw, { allowMissingTargets: true });
    const get = <T>(k: string): T | undefined => (raw[k] === undefined ? undefined : raw[k] as T);
    const init = get<PeftInitLoraWeights | string>("init_lora_weights");
    return new LoraConfig({
      r: get("r"),
      loraAlpha: get("lora_alpha"),
      loraDropout: get("lora_dropout"),
      targetModules: get("target_modules"),
      excludeModules: get("exclude_modules"),
      rankPattern: get("rank_pattern") ?? undefined,
      alphaPattern: get("alpha_pattern") ?? undefined,
      useRslora: get("use_rslora"),
      // Any other init (pissa, olora, loftq, ...) only shaped weights that now come from a file.
      initLoraWeights: init === true || init === false || init === "gaussian" ? init : undefined,
      taskType: get("task_type"),
      baseModelNameOrPath: get("base_model_name_or_path"),
      revision: get("revision"),
      inferenceMode: get("inference_mode"),
    });
  }

  /** A copy with some options changed. */
  with(changes: LoraConfigOptions): LoraConfig {
    return new LoraConfig({ ...this.options(), ...changes });
  }

  /** The options this config was made from (defaults filled in). */
  options(): LoraConfigOptions {
    return {
      r: this.r,
      loraAlpha: this.loraAlpha,
      loraDropout: this.loraDropout,
      targetModules: copyList(this.targetModules),
      excludeModules: copyList(this.excludeModules),
      rankPattern: { ...this.rankPattern },
      alphaPattern: { ...this.alphaPattern },
      useRslora: this.useRslora,
      initLoraWeights: this.initLoraWeights,
      taskType: this.taskType,
      baseModelNameOrPath: this.baseModelNameOrPath,
      revision: this.revision,
      inferenceMode: this.inferenceMode,
    };
  }

  /** PEFT's snake_case `adapter_config.json` fields of a plain LoRA adapter; fromDict(toDict()) round-trips. */
  toDict(): Record<string, unknown> {
    return {
      alpha_pattern: { ...this.alphaPattern },
      auto_mapping: null,
      base_model_name_or_path: this.baseModelNameOrPath,
      bias: "none",
      exclude_modules: copyList(this.excludeModules),
      fan_in_fan_out: false,
      inference_mode: this.inferenceMode,
      init_lora_weights: this.initLoraWeights,
      layers_pattern: null,
      layers_to_transform: null,
      lora_alpha: this.loraAlpha,
      lora_dropout: this.loraDropout,
      modules_to_save: null,
      peft_type: "LORA",
      r: this.r,
      rank_pattern: { ...this.rankPattern },
      revision: this.revision,
      target_modules: copyList(this.targetModules),
      task_type: this.taskType,
      use_dora: false,
      use_rslora: this.useRslora,
    };
  }

  /**
   * The parsed matching and scaling rules; a missing targetModules takes PEFT's default for `modelType`
   * (a ConfigError when there is none).
   */
  adapterConfig(modelType?: string | null): AdapterConfig {
    const dict = this.toDict();
    if (this.targetModules === null && modelType !== undefined) {
      const targets = modelType === null ? undefined : DEFAULT_TARGETS[modelType];
      if (!targets) {
        throw new ConfigError(
          `LoraConfig: targetModules not given and PEFT has no default for model_type ${
            JSON.stringify(modelType)
          }; pass targetModules (e.g. ["q_proj", "v_proj"] or "all-linear")`,
        );
      }
      dict.target_modules = targets;
    }
    try {
      return parseAdapterConfig(dict, { allowMissingTargets: true });
    } catch (e) {
      if (e instanceof ConfigError) {
        throw new ConfigError(e.message.replace(/^adapter_config\.json:/, "LoraConfig:"));
      }
      throw e;
    }
  }
}
