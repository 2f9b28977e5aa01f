/**
 * `PeftConfig`: the LoRA options of NeMo AutoModel's `PeftConfig` (the config of its LinearLoRA module),
 * camelCased, with `fromDict` that also reads NeMo AutoModel's snake_case keys and torch-style dtype strings.
 * @module
 */
import type { DType } from "../core/dtype.ts";
import { ConfigError } from "../core/errors.ts";
import { checkOptionKeys, showValue } from "../core/options.ts";

/** Initialisation of lora_A: Xavier/Glorot normal, or kaiming-uniform with a = √5 ("uniform" / "kaiming"). */
export type LoraAInit = "xavier" | "uniform" | "kaiming";

/** Where LoRA dropout applies: on the input of lora_A ("pre") or on the scaled LoRA output ("post"). */
export type DropoutPosition = "pre" | "post";

/** Options of {@link PeftConfig}. */
export interface PeftConfigOptions {
  targetModules?: string[] | string;
  excludeModules?: string[] | string;
  matchAllLinear?: boolean;
  dim?: number;
  alpha?: number;
  dropout?: number;
  dropoutPosition?: DropoutPosition;
  loraAInit?: LoraAInit;
  loraDtype?: DType | null;
  useFused?: boolean;
}

const SNAKE_TO_CAMEL: Record<string, keyof PeftConfigOptions> = {
  target_modules: "targetModules",
  exclude_modules: "excludeModules",
  match_all_linear: "matchAllLinear",
  dim: "dim",
  alpha: "alpha",
  dropout: "dropout",
  dropout_position: "dropoutPosition",
  lora_A_init: "loraAInit",
  lora_a_init: "loraAInit",
  lora_A_init_method: "loraAInit",
  lora_dtype: "loraDtype",
  use_triton: "useFused",
  use_fused: "useFused",
};

const CAMEL_KEYS = new Set<string>([
  "targetModules",
  "excludeModules",
  "matchAllLinear",
  "dim",
  "alpha",
  "dropout",
  "dropoutPosition",
  "loraAInit",
  "loraDtype",
  "useFused",
]);

/** Parses "float16", "torch.float16", "fp32", "f16", ... into a dtype; null/undefined stay null. */
export function parseDType(value: unknown, where: string): DType | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== "string") {
    throw new ConfigError(`${where}: dtype must be a string, got ${JSON.stringify(value)}`);
  }
  const name = value.replace(/^torch\./, "").toLowerCase();
  const table: Record<string, DType> = {
    f32: "f32",
    float32: "f32",
    fp32: "f32",
    float: "f32",
    f16: "f16",
    float16: "f16",
    fp16: "f16",
    half: "f16",
    f64: "f64",
    float64: "f64",
    double: "f64",
  };
  const d = table[name];
  if (d === undefined) {
    throw new ConfigError(
      `${where}: unsupported dtype ${JSON.stringify(value)} (use float32, float16 or float64)`,
    );
  }
  return d;
}

/**
 * Checks the LoRA layer options shared by configs and layers; throws ConfigError naming `where` and the
 * option (`initName` is the init option's name where the caller spells it differently).
 */
export function validateLoraOptions(
  where: string,
  o: { dim: number; alpha: number; dropout: number; dropoutPosition: string; loraAInit: string },
  initName = "loraAInit",
): void {
  if (!Number.isInteger(o.dim) || o.dim < 1) {
    throw new ConfigError(`${where}: dim (rank) must be an integer ≥ 1, got ${showValue(o.dim)}`);
  }
  if (typeof o.alpha !== "number" || !Number.isFinite(o.alpha)) {
    throw new ConfigError(`${where}: alpha must be a finite number, got ${showValue(o.alpha)}`);
  }
  if (typeof o.dropout !== "number" || !(o.dropout >= 0 && o.dropout < 1)) {
    throw new ConfigError(`${where}: dropout must be in [0, 1), got ${showValue(o.dropout)}`);
  }
  if (o.dropoutPosition !== "pre" && o.dropoutPosition !== "post") {
    throw new ConfigError(
      `${where}: dropoutPosition must be "pre" or "post", got ${JSON.stringify(o.dropoutPosition)}`,
    );
  }
  if (!["xavier", "uniform", "kaiming"].includes(o.loraAInit)) {
    throw new ConfigError(
      `${where}: ${initName} must be "xavier", "uniform" or "kaiming", got ${JSON.stringify(o.loraAInit)}`,
    );
  }
}

function toList(v: string[] | string | undefined | null, where: string): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== "string")) {
    throw new ConfigError(`${where}: expected a string or a list of strings, got ${JSON.stringify(v)}`);
  }
  return [...list];
}

/** LoRA configuration, as NeMo AutoModel's `PeftConfig` defines it. */
export class PeftConfig {
  targetModules: string[];
  excludeModules: string[];
  matchAllLinear: boolean;
  dim: number;
  alpha: number;
  dropout: number;
  dropoutPosition: DropoutPosition;
  loraAInit: LoraAInit;
  loraDtype: DType | null;
  /** Fused kernels (NeMo AutoModel's `use_triton`); default true since the fused path is verified equal. */
  useFused: boolean;

  /** Unknown option names are a ConfigError (a misspelt option would otherwise be silently ignored). */
  constructor(options: PeftConfigOptions = {}) {
    const opts = checkOptionKeys(options, [...CAMEL_KEYS], "PeftConfig") as PeftConfigOptions;
    this.targetModules = toList(opts.targetModules, "PeftConfig.targetModules");
    this.excludeModules = toList(opts.excludeModules, "PeftConfig.excludeModules");
    this.matchAllLinear = opts.matchAllLinear ?? false;
    this.dim = opts.dim ?? 8;
    this.alpha = opts.alpha ?? 32;
    this.dropout = opts.dropout ?? 0;
    this.dropoutPosition = opts.dropoutPosition ?? "post";
    this.loraAInit = opts.loraAInit ?? "xavier";
    this.loraDtype = parseDType(opts.loraDtype, "PeftConfig.loraDtype");
    this.useFused = opts.useFused ?? true;
    if (typeof this.matchAllLinear !== "boolean") {
      throw new ConfigError(
        `PeftConfig: matchAllLinear must be a boolean, got ${JSON.stringify(this.matchAllLinear)}`,
      );
    }
    if (typeof this.useFused !== "boolean") {
      throw new ConfigError(`PeftConfig: useFused must be a boolean, got ${JSON.stringify(this.useFused)}`);
    }
    validateLoraOptions("PeftConfig", this);
  }

  /** Plain object with camelCase keys; `PeftConfig.fromDict(c.toDict())` reproduces `c`. */
  toDict(): Required<{ [K in keyof PeftConfigOptions]: unknown }> & Record<string, unknown> {
    return {
      targetModules: [...this.targetModules],
      excludeModules: [...this.excludeModules],
      matchAllLinear: this.matchAllLinear,
      dim: this.dim,
      alpha: this.alpha,
      dropout: this.dropout,
      dropoutPosition: this.dropoutPosition,
      loraAInit: this.loraAInit,
      loraDtype: this.loraDtype,
      useFused: this.useFused,
    };
  }

  /** Builds a config from camelCase keys or NeMo AutoModel's snake_case keys; unknown keys are a ConfigError. */
  static fromDict(d: Record<string, unknown>): PeftConfig {
    if (d === null || typeof d !== "object" || Array.isArray(d)) {
      throw new ConfigError(`PeftConfig.fromDict: expected an object, got ${JSON.stringify(d)}`);
    }
    const opts: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(d)) {
      const camel = CAMEL_KEYS.has(key) ? key : SNAKE_TO_CAMEL[key];
      if (camel === undefined) {
        throw new ConfigError(
          `PeftConfig.fromDict: unknown key ${JSON.stringify(key)} (known: ${[...CAMEL_KEYS].join(", ")} ` +
            `or their snake_case forms)`,
        );
      }
      if (camel in opts) throw new ConfigError(`PeftConfig.fromDict: ${JSON.stringify(key)} is given twice`);
      opts[camel] = value;
    }
    return new PeftConfig(opts as PeftConfigOptions);
  }
}
