/**
 * Hugging Face PEFT's `adapter_config.json` for LoRA: parsing with validation, PEFT's module-matching
 * rules, and writing a config PEFT accepts.
 *
 * Matching follows PEFT (`check_target_module_exists`, `get_pattern_key`):
 * - `target_modules` / `exclude_modules` as a list: a module name matches an entry when it equals it or
 *   ends with "." + entry; as a string: a Python regex that must match the whole name; exclusion wins.
 *   The string "all-linear" means every Linear except a causal LM's output head.
 * - `rank_pattern` / `alpha_pattern`: each key is a regex tried against the name's dotted suffixes
 *   (`(.*\.)?(key)$` from the start); the first key in file order that matches wins.
 *
 * Options that change the numbers in ways we do not implement (DoRA, bias adapters, modules_to_save, ...)
 * are refused with a ConfigError naming the field, rather than loaded into silently wrong outputs.
 * @module
 */
import { ConfigError, FormatError } from "../core/errors.ts";

/** Which modules a config selects, in PEFT's three forms. */
export type ModuleSelector =
  | { kind: "list"; names: string[] }
  | { kind: "regex"; source: string; regex: RegExp }
  | { kind: "all-linear" };

/** An ordered `rank_pattern` / `alpha_pattern`: keys with their compiled suffix regex and values. */
export type PatternTable = { key: string; regex: RegExp; value: number }[];

/** The parts of a PEFT LoRA config that decide what gets loaded and how it scales. */
export interface AdapterConfig {
  /** Default rank. */
  r: number;
  /** Default alpha. */
  loraAlpha: number;
  targetModules: ModuleSelector;
  /** null when nothing is excluded. */
  excludeModules: ModuleSelector | null;
  rankPattern: PatternTable;
  alphaPattern: PatternTable;
  /** scale = alpha / √r when true, alpha / r otherwise. */
  useRslora: boolean;
  loraDropout: number;
  /** Informational: PEFT's task type ("CAUSAL_LM", ...) or null. */
  taskType: string | null;
  /** Informational: the base model the adapter was trained on, when recorded. */
  baseModelNameOrPath: string | null;
}

/** PEFT's shorthand for "every linear layer except the output head". */
export const ALL_LINEAR = "all-linear";

const WHERE = "adapter_config.json";

/** Fields we read and honour. */
const USED = new Set([
  "r",
  "lora_alpha",
  "target_modules",
  "exclude_modules",
  "rank_pattern",
  "alpha_pattern",
  "use_rslora",
  "lora_dropout",
]);

/**
 * Fields that cannot change the forward pass of a loaded adapter: bookkeeping, or settings that only
 * steered how the weights were initialised or trained (the weights now come from the file).
 */
const INFORMATIONAL = new Set([
  "task_type",
  "base_model_name_or_path",
  "revision",
  "inference_mode",
  "auto_mapping",
  "peft_version",
  "init_lora_weights",
  "eva_config",
  "corda_config",
  "lora_ga_config",
  "megatron_core",
  "qalora_group_size",
  "runtime_config",
  "ensure_weight_tying",
]);

/** Fields we refuse unless they hold their "off" value, with what the feature is. */
const REFUSED: Record<string, string> = {
  use_dora: "DoRA (weight-decomposed LoRA)",
  lora_bias: "a trainable bias on lora_B",
  modules_to_save: "extra fully trained modules saved with the adapter",
  fan_in_fan_out: "transposed (Conv1D-style) base weights",
  layers_to_transform: "adapting only some layer indices",
  layers_pattern: "adapting only some layer indices",
  use_qalora: "QA-LoRA (pooled inputs)",
  target_parameters: "LoRA on raw parameters instead of modules",
  alora_invocation_tokens: "activated LoRA (aLoRA)",
  megatron_config: "Megatron parallel layers",
  trainable_token_indices: "trainable token embeddings",
  loftq_config: "LoftQ (the base weights were quantized and replaced)",
  layer_replication: "layer replication (the model's layer stack changes)",
  arrow_config: "Arrow adapter routing",
  use_bdlora: "block-diagonal LoRA",
  kasa_config: "KaSA (singular-value adaptation)",
  monteclora_config: "MonteCLoRA (stochastic LoRA)",
  velora_config: "VeLoRA (compressed activations)",
};

/** Options of {@link parseAdapterConfig}. */
export interface ParseAdapterConfigOptions {
  /**
   * false (default): a file without `target_modules` is an error (a saved adapter must say what it
   * patched); true: it parses with an empty target list (a config written by hand, targets still to come).
   */
  allowMissingTargets?: boolean;
}

/** null, false, "", [] and {}: the values that switch an option off in PEFT's configs. */
function isOff(v: unknown): boolean {
  if (v === null || v === undefined || v === false || v === "") return true;
  if (Array.isArray(v)) return v.length === 0;
  return typeof v === "object" && Object.keys(v as object).length === 0;
}

const show = (v: unknown) => {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 120 ? s.slice(0, 117) + "..." : s;
};

/**
 * Translates the few Python-only regex spellings PEFT users write (`(?P<name>`, `(?P=name)`, `\A`, `\Z`)
 * into JavaScript's; everything else is the same in both dialects for module names.
 */
function pythonToJsRegex(source: string): string {
  let out = "";
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === "\\" && i + 1 < source.length) {
      const n = source[i + 1];
      out += n === "A" ? "^" : n === "Z" ? "$" : c + n;
      i++;
    } else if (source.startsWith("(?P<", i)) {
      out += "(?<";
      i += 3;
    } else if (source.startsWith("(?P=", i)) {
      const end = source.indexOf(")", i);
      if (end < 0) return source; // leave it to RegExp to report
      out += `\\k<${source.slice(i + 4, end)}>`;
      i = end;
    } else {
      out += c;
    }
  }
  return out;
}

/** Compiles `^(?:<prefix>)(?:<python regex>)$`; a ConfigError naming `field` when it is not valid. */
function compile(pattern: string, prefix: string, field: string): RegExp {
  try {
    return new RegExp(`^${prefix}(?:${pythonToJsRegex(pattern)})$`);
  } catch (err) {
    throw new ConfigError(
      `${WHERE}: ${field} has an invalid regex ${show(pattern)}: ${(err as Error).message}`,
    );
  }
}

function parseSelector(v: unknown, field: string): ModuleSelector | null {
  if (isOff(v)) return null;
  if (typeof v === "string") {
    if (v === ALL_LINEAR && field === "target_modules") return { kind: "all-linear" };
    return { kind: "regex", source: v, regex: compile(v, "", field) };
  }
  if (Array.isArray(v) && v.every((x) => typeof x === "string" && x.length > 0)) {
    return { kind: "list", names: [...v] };
  }
  throw new ConfigError(
    `${WHERE}: ${field} must be a list of module names or a regex string, got ${show(v)}`,
  );
}

function parsePattern(v: unknown, field: string, isRank: boolean): PatternTable {
  if (v === null || v === undefined) return [];
  if (typeof v !== "object" || Array.isArray(v)) {
    throw new ConfigError(
      `${WHERE}: ${field} must be an object mapping module patterns to values, got ${show(v)}`,
    );
  }
  return Object.entries(v as Record<string, unknown>).map(([key, value]) => {
    if (isRank ? !isPositiveInt(value) : !isFiniteNumber(value)) {
      const want = isRank ? "a positive integer rank" : "a finite number";
      throw new ConfigError(`${WHERE}: ${field}[${show(key)}] must be ${want}, got ${show(value)}`);
    }
    return { key, regex: compile(key, "(?:.*\\.)?", `${field} key`), value: value as number };
  });
}

const isPositiveInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 1;
const isFiniteNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

function decodeJson(src: string | Uint8Array): Record<string, unknown> {
  let text: string;
  try {
    text = typeof src === "string" ? src : new TextDecoder("utf-8", { fatal: true }).decode(src);
  } catch {
    throw new FormatError(`${WHERE}: not valid UTF-8`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new FormatError(`${WHERE}: malformed JSON (${(err as Error).message})`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new FormatError(`${WHERE}: expected a JSON object, got ${show(parsed)}`);
  }
  return parsed as Record<string, unknown>;
}

/**
 * Parses and validates a PEFT LoRA `adapter_config.json` (its text, bytes, or the parsed object).
 * @throws {FormatError} malformed JSON or a non-object
 * @throws {ConfigError} a non-LoRA `peft_type`, an unsupported option (named), bad values, or an unknown
 *   field that is not switched off
 */
export function parseAdapterConfig(
  src: string | Uint8Array | Record<string, unknown>,
  opts: ParseAdapterConfigOptions = {},
): AdapterConfig {
  const raw = typeof src === "string" || src instanceof Uint8Array ? decodeJson(src) : src;
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new FormatError(`${WHERE}: expected an object, got ${show(raw)}`);
  }
  // A missing peft_type is tolerated: LoraConfig.from_pretrained reads such files as LoRA too.
  if (raw.peft_type !== undefined && raw.peft_type !== "LORA") {
    throw new ConfigError(
      `${WHERE}: peft_type ${show(raw.peft_type)} is not supported; only "LORA" adapters load`,
    );
  }
  if (raw.bias !== undefined && raw.bias !== null && raw.bias !== "none") {
    throw new ConfigError(
      `${WHERE}: bias ${
        show(raw.bias)
      } is not supported (trained base biases are not part of a LoRA adapter ` +
        `here); only "none"`,
    );
  }
  for (const [field, value] of Object.entries(raw)) {
    if (field === "peft_type" || field === "bias" || USED.has(field) || INFORMATIONAL.has(field)) continue;
    if (isOff(value)) continue;
    const what = REFUSED[field];
    throw new ConfigError(
      what
        ? `${WHERE}: ${field} = ${show(value)} is not supported (${what})`
        : `${WHERE}: unknown field ${field} = ${
          show(value)
        }; refusing to guess whether it changes the outputs`,
    );
  }
  const r = raw.r ?? 8;
  if (!isPositiveInt(r)) throw new ConfigError(`${WHERE}: r must be a positive integer, got ${show(r)}`);
  const loraAlpha = raw.lora_alpha ?? 8;
  if (!isFiniteNumber(loraAlpha)) {
    throw new ConfigError(`${WHERE}: lora_alpha must be a finite number, got ${show(loraAlpha)}`);
  }
  const loraDropout = raw.lora_dropout ?? 0;
  if (!isFiniteNumber(loraDropout) || loraDropout < 0 || loraDropout >= 1) {
    throw new ConfigError(`${WHERE}: lora_dropout must be a number in [0, 1), got ${show(loraDropout)}`);
  }
  const useRslora = raw.use_rslora ?? false;
  if (typeof useRslora !== "boolean") {
    throw new ConfigError(`${WHERE}: use_rslora must be a boolean, got ${show(useRslora)}`);
  }
  const targetModules: ModuleSelector | null = parseSelector(raw.target_modules, "target_modules") ??
    (opts.allowMissingTargets ? { kind: "list", names: [] } : null);
  if (targetModules === null) {
    throw new ConfigError(
      `${WHERE}: target_modules is missing or empty; PEFT records the modules it adapted there, so this file ` +
        `cannot say which modules to patch`,
    );
  }
  const optionalString = (field: string): string | null => {
    const v = raw[field];
    return typeof v === "string" ? v : null;
  };
  return {
    r,
    loraAlpha,
    targetModules,
    excludeModules: parseSelector(raw.exclude_modules, "exclude_modules"),
    rankPattern: parsePattern(raw.rank_pattern, "rank_pattern", true),
    alphaPattern: parsePattern(raw.alpha_pattern, "alpha_pattern", false),
    useRslora,
    loraDropout,
    taskType: optionalString("task_type"),
    baseModelNameOrPath: optionalString("base_model_name_or_path"),
  };
}

/**
 * PEFT's name test for a list or regex selector: list entries match exactly or as a "."-bounded suffix,
 * a regex must match the whole name. ("all-linear" depends on the module, so callers handle it.)
 */
export function selectorMatches(sel: ModuleSelector, name: string): boolean {
  if (sel.kind === "list") return sel.names.some((n) => name === n || name.endsWith("." + n));
  if (sel.kind === "regex") return sel.regex.test(name);
  throw new ConfigError(`selectorMatches: "${ALL_LINEAR}" depends on the module type, not only its name`);
}

/** The value of the first pattern key (in order) matching `name` PEFT's way, else `fallback`. */
export function patternValue(table: PatternTable, name: string, fallback: number): number {
  for (const { regex, value } of table) if (regex.test(name)) return value;
  return fallback;
}

/** LoRA's multiplier: alpha / √r with rsLoRA, alpha / r otherwise. */
export function loraScale(alpha: number, r: number, useRslora: boolean): number {
  return useRslora ? alpha / Math.sqrt(r) : alpha / r;
}

/** Escapes every regex metacharacter, so a module name matches only itself. */
function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

/**
 * A `rank_pattern` / `alpha_pattern` that makes PEFT resolve every module in `values` to its value, and
 * modules not listed to `fallback`. Keys are exact module names; because PEFT treats keys as regexes on
 * name suffixes, the result is checked by resolving it PEFT's way, and when a key would catch another
 * module the order, the listed modules, and finally regex escaping are adjusted until it resolves exactly.
 */
export function exactPattern(values: Map<string, number>, fallback: number): Record<string, number> {
  const names = [...values.keys()];
  const attempts: { escape: boolean; order: (a: string, b: string) => number }[] = [
    { escape: false, order: (a, b) => (a < b ? -1 : a > b ? 1 : 0) },
    { escape: false, order: (a, b) => b.length - a.length || (a < b ? -1 : 1) },
    { escape: true, order: (a, b) => b.length - a.length || (a < b ? -1 : 1) },
  ];
  const plainSafe = names.every((n) => /^[\w.]+$/.test(n));
  for (const { escape, order } of attempts) {
    if (!escape && !plainSafe) continue;
    const listed = new Set(names.filter((n) => values.get(n) !== fallback));
    for (let round = 0; round <= names.length; round++) {
      const keys = [...listed].sort(order);
      const table: PatternTable = keys.map((n) => ({
        key: escape ? escapeRegex(n) : n,
        regex: new RegExp(`^(?:.*\\.)?(?:${escape ? escapeRegex(n) : n})$`),
        value: values.get(n)!,
      }));
      const wrong = names.filter((n) => patternValue(table, n, fallback) !== values.get(n));
      if (wrong.length === 0) return Object.fromEntries(table.map((e) => [e.key, e.value]));
      const fresh = wrong.filter((n) => !listed.has(n));
      if (fresh.length === 0) break;
      for (const n of fresh) listed.add(n);
    }
  }
  // Escaped exact keys, longest first, always resolve exactly; reaching this line is a bug.
  throw new ConfigError(`exactPattern: could not build a pattern resolving ${names.length} modules exactly`);
}

/** What {@link serializeAdapterConfig} writes. */
export interface AdapterConfigFields {
  r: number;
  loraAlpha: number;
  /** Exact module names (written sorted). */
  targetModules: string[];
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  useRslora: boolean;
  loraDropout: number;
  taskType: string | null;
  baseModelNameOrPath: string | null;
}

/**
 * An `adapter_config.json` text PEFT loads: the fields PEFT writes for a plain LoRA adapter, keys sorted
 * and indented by two like PEFT's own `json.dumps(..., indent=2, sort_keys=True)`. Pattern dicts keep
 * their given order, which PEFT's first-match rule depends on.
 */
export function serializeAdapterConfig(f: AdapterConfigFields): string {
  const fields: Record<string, unknown> = {
    alpha_pattern: f.alphaPattern,
    auto_mapping: null,
    base_model_name_or_path: f.baseModelNameOrPath,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    lora_alpha: f.loraAlpha,
    lora_dropout: f.loraDropout,
    modules_to_save: null,
    peft_type: "LORA",
    r: f.r,
    rank_pattern: f.rankPattern,
    revision: null,
    target_modules: [...f.targetModules].sort(),
    task_type: f.taskType,
    use_dora: false,
    use_rslora: f.useRslora,
  };
  const sorted = Object.fromEntries(Object.keys(fields).sort().map((k) => [k, fields[k]]));
  return JSON.stringify(sorted, null, 2);
}
