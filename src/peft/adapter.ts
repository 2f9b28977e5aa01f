/**
 * LoRA adapters in Hugging Face PEFT's on-disk format, both ways: `adapter_model.safetensors` with keys
 * `base_model.model.<module path>.lora_A.weight` ([r, in]) and `.lora_B.weight` ([out, r]), plus
 * `adapter_config.json` (see adapter_config.ts for the fields and matching rules).
 *
 * Error classes, consistently: ConfigError for what the config asks (unsupported options, targets that
 * match nothing or a non-Linear, modules that already carry an adapter); FormatError for files that are
 * missing or malformed and for weight keys that do not fit the config (missing, unexpected, misnamed);
 * ShapeError for weights of the wrong shape.
 * @module
 */
import type { Module, StateValue } from "../nn/module.ts";
import { Linear } from "../nn/layers.ts";
import type { Tensor } from "../tensor/mod.ts";
import { readSafetensors, type SafetensorsTensor, writeSafetensors } from "../io/safetensors.ts";
import { isNotFoundError, joinPath, pathKind, readFileBytes, resolveDir, writeDirAtomic } from "../io/fs.ts";
import { adapterModules, isLoraLinear, type LinearLoRA, patchLinearModule } from "./lora_linear.ts";
import {
  adapterWeightKey,
  adapterWeights,
  LORA_WEIGHTS,
  type LoraAdapter,
  type NamedWeightField,
} from "./lora_fields.ts";
import { validateLoraOptions } from "./nemo_config.ts";
import { isCausalLM, sampleNames } from "./apply.ts";
import { isOutputHead } from "./matcher.ts";
import {
  type AdapterConfig,
  ALL_LINEAR,
  exactPattern,
  loraScale,
  type ModuleSelector,
  parseAdapterConfig,
  patternValue,
  selectorMatches,
  serializeAdapterConfig,
} from "./adapter_config.ts";
import { ConfigError, DeviceError, FormatError, ShapeError } from "../core/errors.ts";

/** File name of the adapter weights in PEFT's layout. */
export const ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors";
/** File name of the adapter config in PEFT's layout. */
export const ADAPTER_CONFIG_NAME = "adapter_config.json";

/** The two files of an adapter, as {@link adapterToFiles} returns them. */
export interface AdapterFiles {
  "adapter_model.safetensors": Uint8Array;
  "adapter_config.json": string;
}

/** An adapter given by its contents (browsers, or bytes fetched from anywhere); the config as text or bytes. */
export interface AdapterFilesInput {
  "adapter_model.safetensors": Uint8Array;
  "adapter_config.json": string | Uint8Array;
}

/** Options of {@link saveAdapter} and {@link adapterToFiles}. */
export interface SaveAdapterOptions {
  /** Recorded as `base_model_name_or_path` (PEFT uses it to find the base model); default null. */
  baseModelNameOrPath?: string;
  /**
   * false (default): a NaN or infinite adapter weight is a FormatError naming the tensor and nothing is
   * written (a diverged run must not overwrite a good adapter); true writes them anyway.
   */
  allowNonFinite?: boolean;
}

/** Options of {@link loadAdapter}. */
export interface LoadAdapterOptions {
  /**
   * true (default): the loaded adapters train and every non-LoRA parameter is frozen, whatever the
   * file's `inference_mode` says; false: the loaded adapters are frozen too.
   */
  trainable?: boolean;
}

/** What PEFT puts before a module path in its weight keys (the wrapper's `base_model.model`). */
export const PEFT_KEY_PREFIX = "base_model.model.";

/** PEFT's file key of an adapter weight of the module at `modulePath`. */
function peftKey(modulePath: string, field: NamedWeightField): string {
  return PEFT_KEY_PREFIX + adapterWeightKey(modulePath, field);
}

const FLOAT_FILE_DTYPES = new Set(["F32", "F16", "BF16", "F64"]);

// ---------------------------------------------------------------------------------------------------
// Saving
// ---------------------------------------------------------------------------------------------------

/** A tensor's values with what the file needs to store them. */
interface HostTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Float64Array;
}

/** The LoRA layers of a model with their dotted names, in module order; a ConfigError when there are none. */
function loraLayers(model: Module, op: string): [string, LinearLoRA][] {
  const found = model.namedModules().filter((e): e is [string, LinearLoRA] => isLoraLinear(e[1]));
  if (found.length === 0) {
    throw new ConfigError(`${op}: the model has no LoRA layers to save (modules: ${sampleNames(model)})`);
  }
  if (found.some(([name]) => name === "")) {
    throw new ConfigError(
      `${op}: the model itself is a LoRA layer; PEFT names adapters by module path, so wrap it`,
    );
  }
  return found;
}

/** Whether two scales agree up to rounding (alpha / r recomputed may differ in the last bit). */
function sameScale(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-12 * Math.max(Math.abs(a), Math.abs(b));
}

/** The value occurring most often (ties: the first seen). */
function mostCommon(values: number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0];
  for (const [v, c] of counts) if (c > counts.get(best)!) best = v;
  return best;
}

/**
 * The config describing `layers`. PEFT knows one scale rule per adapter, so rsLoRA is declared only when
 * every layer's scale is alpha / √r (and the plain rule does not already explain them all); a layer whose
 * scale fits neither rule with its own alpha (a custom `scale`) is written with the alpha that yields its
 * scale under the declared rule.
 */
function buildConfig(model: Module, layers: [string, LoraAdapter][], opts: SaveAdapterOptions): string {
  const fitsPlain = (l: LoraAdapter) => sameScale(l.scale, l.alpha / l.dim);
  const fitsRs = (l: LoraAdapter) => sameScale(l.scale, l.alpha / Math.sqrt(l.dim));
  const useRslora = layers.every(([, l]) => fitsRs(l)) && !layers.every(([, l]) => fitsPlain(l));
  const ranks = new Map<string, number>();
  const alphas = new Map<string, number>();
  for (const [name, l] of layers) {
    ranks.set(name, l.dim);
    const fits = useRslora ? fitsRs(l) : fitsPlain(l);
    alphas.set(name, fits ? l.alpha : l.scale * (useRslora ? Math.sqrt(l.dim) : l.dim));
  }
  const r = mostCommon([...ranks.values()]);
  const loraAlpha = mostCommon([...alphas.values()]);
  return serializeAdapterConfig({
    r,
    loraAlpha,
    targetModules: layers.map(([name]) => name),
    rankPattern: exactPattern(ranks, r),
    alphaPattern: exactPattern(alphas, loraAlpha),
    useRslora,
    loraDropout: mostCommon(layers.map(([, l]) => l.dropoutP)),
    taskType: isCausalLM(model) ? "CAUSAL_LM" : null,
    baseModelNameOrPath: opts.baseModelNameOrPath ?? null,
  });
}

const FILE_DTYPE: Record<string, string> = { f32: "F32", f16: "F16", f64: "F64" };

/** Both files from each layer's weights (`weights[i]` in LORA_WEIGHTS order for `layers[i]`). */
function encodeFiles(
  model: Module,
  layers: [string, LoraAdapter][],
  weights: HostTensor[][],
  opts: SaveAdapterOptions,
  op: string,
): AdapterFiles {
  const entries: Record<string, HostTensor> = {};
  layers.forEach(([name], i) => {
    LORA_WEIGHTS.forEach((field, j) => entries[peftKey(name, field)] = weights[i][j]);
  });
  if (opts.allowNonFinite !== undefined && typeof opts.allowNonFinite !== "boolean") {
    throw new ConfigError(
      `${op}: allowNonFinite must be true or false, got ${shown(opts.allowNonFinite)}`,
    );
  }
  if (!opts.allowNonFinite) {
    for (const [key, t] of Object.entries(entries)) {
      const data = t.data as ArrayLike<number>;
      let bad = 0, first = -1;
      for (let i = 0; i < data.length; i++) {
        if (!Number.isFinite(data[i])) {
          if (first < 0) first = i;
          bad++;
        }
      }
      if (bad > 0) {
        throw new FormatError(
          `${op}: adapter weight ${key} (shape [${t.shape.join(", ")}]) holds ${bad} non-finite value(s), ` +
            `the first ${data[first]} at flat index ${first}; nothing was written (training diverged? ` +
            `pass { allowNonFinite: true } to save them anyway)`,
        );
      }
    }
  }
  return {
    [ADAPTER_WEIGHTS_NAME]: writeSafetensors(entries, { format: "pt" }),
    [ADAPTER_CONFIG_NAME]: buildConfig(model, layers, opts),
  } as AdapterFiles;
}

const hostTensor = (t: Tensor, data: Float32Array | Float64Array): HostTensor => ({
  dtype: FILE_DTYPE[t.dtype],
  shape: [...t.shape],
  data,
});

/**
 * The adapter of `model` as PEFT's two files, synchronously: every LoRA layer's weights (in their own
 * dtype) and a config PEFT loads. CPU models only; use {@link adapterToFilesAsync} or {@link saveAdapter}
 * for a model on a GPU.
 * @throws {ConfigError} when the model has no LoRA layers
 * @throws {DeviceError} when an adapter weight is not on the CPU
 */
export function adapterToFiles(model: Module, opts: SaveAdapterOptions = {}): AdapterFiles {
  const layers = loraLayers(model, "adapterToFiles");
  const weights = layers.map(([name, l]) =>
    adapterWeights(l).map(([, t]) => {
      if (t.device.kind !== "cpu") {
        throw new DeviceError(
          `adapterToFiles: ${name} has adapter weights on ${t.device}, which cannot be read synchronously; ` +
            `use await saveAdapter(...) or await adapterToFilesAsync(...), or move the model to the CPU`,
        );
      }
      return hostTensor(t, t.dataSync());
    })
  );
  return encodeFiles(model, layers, weights, opts, "adapterToFiles");
}

/**
 * Every layer's adapter weights read back to the host, all reads started before any is awaited: each read
 * waits for the device (>= 11 ms on WebGPU in Deno), so one after another a SmolLM2-135M adapter's 420
 * weights took about 5 s on the H200.
 */
async function readWeights(layers: [string, LoraAdapter][]): Promise<HostTensor[][]> {
  return await Promise.all(
    layers.map(([, l]) => Promise.all(adapterWeights(l).map(async ([, t]) => hostTensor(t, await t.data())))),
  );
}

/** {@link adapterToFiles} for models on any device (reads GPU weights back asynchronously). */
export async function adapterToFilesAsync(
  model: Module,
  opts: SaveAdapterOptions = {},
  op = "adapterToFilesAsync",
): Promise<AdapterFiles> {
  const layers = loraLayers(model, op);
  return encodeFiles(model, layers, await readWeights(layers), opts, op);
}

/**
 * The files of one adapter given as records per module path (not necessarily the ones a layer carries
 * now: PeftModel keeps its other adapters beside the layer), read back from any device.
 */
export async function adapterRecordsToFiles(
  model: Module,
  layers: [string, LoraAdapter][],
  opts: SaveAdapterOptions = {},
  op = "saveAdapter",
): Promise<AdapterFiles> {
  return encodeFiles(model, layers, await readWeights(layers), opts, op);
}

/**
 * Writes the adapter of `model` into directory `dir` (created when missing) as PEFT's
 * `adapter_model.safetensors` and `adapter_config.json`, all-or-nothing across both files (see
 * writeDirAtomic in src/io/fs.ts: a complete new folder beside `dir`, switched in by one rename; `dir`
 * becomes a symbolic link to it; other files already in `dir` are kept). Non-finite weights are a
 * FormatError naming the tensor unless `allowNonFinite`. Deno, Node and Bun only; in browsers use
 * {@link adapterToFiles}.
 */
export async function saveAdapter(model: Module, dir: string, opts: SaveAdapterOptions = {}): Promise<void> {
  if (typeof dir !== "string" || dir === "") {
    throw new ConfigError(`saveAdapter: dir must be a non-empty path string, got ${shown(dir)}`);
  }
  if (opts === null || typeof opts !== "object") {
    throw new ConfigError(`saveAdapter: options must be an object, got ${shown(opts)}`);
  }
  for (const key of Object.keys(opts)) {
    if (!["baseModelNameOrPath", "allowNonFinite"].includes(key)) {
      throw new ConfigError(
        `saveAdapter: unknown option ${JSON.stringify(key)} (known: baseModelNameOrPath, allowNonFinite)`,
      );
    }
  }
  if (opts.baseModelNameOrPath !== undefined && typeof opts.baseModelNameOrPath !== "string") {
    throw new ConfigError(
      `saveAdapter: baseModelNameOrPath must be a string, got ${shown(opts.baseModelNameOrPath)}`,
    );
  }
  const files = await adapterToFilesAsync(model, opts, "saveAdapter");
  await writeDirAtomic(dir, {
    [ADAPTER_WEIGHTS_NAME]: files[ADAPTER_WEIGHTS_NAME],
    [ADAPTER_CONFIG_NAME]: files[ADAPTER_CONFIG_NAME],
  }, { op: "saveAdapter" });
}

/** A value as the user wrote it: strings quoted (so "8" never reads as 8), the rest as JSON or String. */
function shown(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "bigint" || typeof v === "function" || typeof v === "symbol") return String(v);
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

// ---------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------

/** One module to patch, fully checked. */
export interface Planned {
  name: string;
  linear: Linear;
  r: number;
  alpha: number;
  scale: number;
  /** The file's tensor for each adapter weight, in LORA_WEIGHTS order. */
  weights: SafetensorsTensor[];
}

async function readRequired(path: string, what: string): Promise<Uint8Array> {
  try {
    return await readFileBytes(path);
  } catch (err) {
    if (isNotFoundError(err)) throw new FormatError(`loadAdapter: ${path} not found (${what})`);
    // Any other runtime failure (a file where the directory should be, no permission): a bad path.
    const why = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    throw new ConfigError(`loadAdapter: could not read ${path}, ${what} (${why})`);
  }
}

/** The config and weights of an adapter given as a directory or as file contents. */
export async function readAdapterSource(
  source: string | AdapterFilesInput,
): Promise<{ config: string | Uint8Array; weights: Uint8Array }> {
  if (typeof source === "string") {
    // Both files from the one save `source` points at now, even if another save switches it meanwhile.
    source = await resolveDir(source);
    if (source === "") throw new ConfigError(`loadAdapter: the adapter directory path is empty`);
    // A path that leads nowhere is a bad argument (ConfigError, as API.md's Errors say); a directory
    // lacking one of the files is a bad save (FormatError, below).
    const kind = await pathKind(source);
    if (kind !== "dir") {
      throw new ConfigError(
        `loadAdapter: the adapter directory ${source} ${
          kind === null ? "does not exist" : "is a file, not a directory"
        }`,
      );
    }
    const weightsPath = joinPath(source, ADAPTER_WEIGHTS_NAME);
    const config = await readRequired(joinPath(source, ADAPTER_CONFIG_NAME), "the adapter config");
    if (
      (await pathKind(weightsPath)) === null &&
      (await pathKind(joinPath(source, "adapter_model.bin"))) !== null
    ) {
      throw new FormatError(
        `loadAdapter: ${source} holds adapter_model.bin (a pickled PyTorch file), which is not read here; ` +
          `re-save it with PEFT's safe_serialization=True to get ${ADAPTER_WEIGHTS_NAME}`,
      );
    }
    return { config, weights: await readRequired(weightsPath, "the adapter weights") };
  }
  if (source === null || typeof source !== "object") {
    throw new ConfigError(
      `loadAdapter: expected a directory path or a files object, got ${JSON.stringify(source)}`,
    );
  }
  const config = source[ADAPTER_CONFIG_NAME];
  const weights = source[ADAPTER_WEIGHTS_NAME];
  const missing = [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME].filter((k) => !(k in source));
  if (missing.length > 0) {
    throw new FormatError(
      `loadAdapter: the files object lacks ${missing.join(" and ")} (has: ${Object.keys(source)})`,
    );
  }
  if (typeof config !== "string" && !(config instanceof Uint8Array)) {
    throw new FormatError(`loadAdapter: ${ADAPTER_CONFIG_NAME} must be a string or Uint8Array`);
  }
  if (!(weights instanceof Uint8Array)) {
    throw new FormatError(`loadAdapter: ${ADAPTER_WEIGHTS_NAME} must be a Uint8Array`);
  }
  return { config, weights };
}

/** The modules the config targets, PEFT's way (exclusion first), with adapter internals left out. */
export function targetedModules(model: Module, cfg: AdapterConfig): [string, Module][] {
  const adapterParts = adapterModules(model);
  const causal = isCausalLM(model);
  return model.namedModules().filter(([name, m]) => {
    if (name === "" || adapterParts.has(m)) return false;
    if (cfg.excludeModules && selectorMatches(cfg.excludeModules, name)) return false;
    if (cfg.targetModules.kind === "all-linear") {
      return m instanceof Linear && !(causal && isOutputHead(name));
    }
    return selectorMatches(cfg.targetModules, name);
  });
}

/** A selector as the config spelled it, for messages. */
function showSelector(sel: ModuleSelector): string {
  return JSON.stringify(sel.kind === "list" ? sel.names : sel.kind === "regex" ? sel.source : ALL_LINEAR);
}

function describeTargets(cfg: AdapterConfig): string {
  const excl = cfg.excludeModules ? ` excluding ${showSelector(cfg.excludeModules)}` : "";
  return `target_modules ${showSelector(cfg.targetModules)}${excl}`;
}

const list = (xs: string[], n = 8) =>
  xs.slice(0, n).join(", ") + (xs.length > n ? `, … (${xs.length} in all)` : "");

/** The adapter weights' child names as a RegExp alternation ("lora_A|lora_B"). */
const WEIGHT_NAMES = LORA_WEIGHTS.map((f) => f.name).join("|");
/** A key that still holds PEFT's adapter name between the child and `weight`. */
const NAMED_ADAPTER_KEY = new RegExp(`\\.(${WEIGHT_NAMES})\\.[^.]+\\.weight$`);
/** A bias on an adapter child (PEFT's `lora_bias`). */
const ADAPTER_BIAS_KEY = new RegExp(`\\.(${WEIGHT_NAMES})\\.bias$`);

/** Why a weight key is not in PEFT's standard form, when we can tell. */
function keyHint(key: string): string {
  if (NAMED_ADAPTER_KEY.test(key)) {
    return ` (the adapter name is still in the key; PEFT saves keys without it, e.g. \`.${
      LORA_WEIGHTS[0].stateKey
    }\`)`;
  }
  if (key.includes("lora_magnitude_vector")) return " (a DoRA magnitude vector; DoRA is not supported)";
  if (key.includes("lora_embedding_")) return " (an embedding LoRA; only Linear modules are supported)";
  if (ADAPTER_BIAS_KEY.test(key)) return " (an adapter bias; PEFT's lora_bias is not supported)";
  if (!key.startsWith(PEFT_KEY_PREFIX)) return ` (PEFT keys start with "${PEFT_KEY_PREFIX}")`;
  return "";
}

/** Checks that every weight of `p` has the shape its field demands at rank r, and a float dtype. */
function checkShapes(p: Omit<Planned, "scale">): void {
  LORA_WEIGHTS.forEach((field, i) => {
    const t = p.weights[i];
    const expect = field.shape(p.linear, p.r);
    if (t.shape.length !== 2 || t.shape[0] !== expect[0] || t.shape[1] !== expect[1]) {
      throw new ShapeError(
        `loadAdapter: ${peftKey(p.name, field)} has shape [${t.shape}] but ${p.name} ` +
          `(in ${p.linear.inFeatures}, out ${p.linear.outFeatures}) with r = ${p.r} needs [${expect}]`,
      );
    }
    if (!FLOAT_FILE_DTYPES.has(t.dtype)) {
      throw new FormatError(
        `loadAdapter: ${peftKey(p.name, field)} has dtype ${t.dtype}; expected F32, F16, BF16 or F64`,
      );
    }
  });
}

/** The module path and weight field a PEFT key names, or null when it names no adapter weight. */
function parsePeftKey(key: string): { module: string; index: number } | null {
  if (!key.startsWith(PEFT_KEY_PREFIX)) return null;
  const index = LORA_WEIGHTS.findIndex((f) => key.endsWith(`.${f.stateKey}`));
  if (index < 0) return null;
  const module = key.slice(PEFT_KEY_PREFIX.length, key.length - LORA_WEIGHTS[index].stateKey.length - 1);
  return module === "" ? null : { module, index };
}

/** Validates everything (config, targets, keys, shapes) and returns what to patch; changes nothing. */
export function planLoad(
  model: Module,
  cfg: AdapterConfig,
  tensors: Map<string, SafetensorsTensor>,
): Planned[] {
  const targets = targetedModules(model, cfg);
  if (targets.length === 0) {
    throw new ConfigError(
      `loadAdapter: ${describeTargets(cfg)} matches no module of the model; PEFT matches list entries ` +
        `exactly or as a ".suffix" and regex strings against the whole name; modules are: ${
          sampleNames(model)
        }`,
    );
  }
  for (const [name, m] of targets) {
    if (isLoraLinear(m)) {
      throw new ConfigError(
        `loadAdapter: ${name} already has a LoRA adapter; call mergeAndUnload(model) first or load onto a fresh model`,
      );
    }
    if (!(m instanceof Linear)) {
      throw new ConfigError(
        `loadAdapter: ${
          describeTargets(cfg)
        } matches ${name}, a ${m.constructor.name}; only Linear modules ` +
          `take LoRA adapters here (PEFT rejects such targets too)`,
      );
    }
  }
  const byModule = new Map<string, (SafetensorsTensor | undefined)[]>();
  for (const [name] of targets) byModule.set(name, LORA_WEIGHTS.map(() => undefined));
  const unexpected: string[] = [];
  for (const [key, t] of tensors) {
    const parsed = parsePeftKey(key);
    const slot = parsed ? byModule.get(parsed.module) : undefined;
    if (!parsed || !slot) {
      unexpected.push(key + keyHint(key));
      continue;
    }
    slot[parsed.index] = t;
  }
  if (unexpected.length > 0) {
    throw new FormatError(
      `loadAdapter: ${ADAPTER_WEIGHTS_NAME} has keys that fit no module the config targets: ${
        list(unexpected, 5)
      }; ` +
        `targeted modules: ${list(targets.map(([n]) => n), 5)}`,
    );
  }
  const missing: string[] = [];
  for (const [name, slot] of byModule) {
    LORA_WEIGHTS.forEach((field, i) => {
      if (!slot[i]) missing.push(peftKey(name, field));
    });
  }
  if (missing.length > 0) {
    throw new FormatError(
      `loadAdapter: ${ADAPTER_WEIGHTS_NAME} lacks weights for modules the config targets: ${list(missing)}`,
    );
  }
  return targets.map(([name, m]) => {
    const linear = m as Linear;
    const r = patternValue(cfg.rankPattern, name, cfg.r);
    const alpha = patternValue(cfg.alphaPattern, name, cfg.loraAlpha);
    const plan = { name, linear, r, alpha, weights: byModule.get(name) as SafetensorsTensor[] };
    checkShapes(plan);
    validateLoraOptions(`loadAdapter(${name})`, {
      dim: r,
      alpha,
      dropout: cfg.loraDropout,
      dropoutPosition: "pre",
      loraAInit: "xavier",
    });
    return { ...plan, scale: loraScale(alpha, r, cfg.useRslora) };
  });
}

/**
 * Loads a PEFT LoRA adapter onto `model`: patches every Linear the config targets (PEFT's matching rules,
 * per-module rank and alpha from `rank_pattern` / `alpha_pattern`, rsLoRA scaling, dropout on the LoRA
 * input as PEFT places it) and copies in the weights, converted to each module's dtype and device.
 *
 * Strict and all-or-nothing: the config, the targeted modules and every weight key and shape are checked
 * before any module changes. Every weight in the file must land on a targeted module and every targeted
 * module must get both its weights.
 *
 * @param source a directory holding `adapter_config.json` and `adapter_model.safetensors` (Deno, Node,
 *   Bun), or the two files' contents
 * @returns the names of the patched modules, in model order
 * @throws {ConfigError} a directory that does not exist (or is a file), unsupported options (named),
 *   targets matching nothing or a non-Linear module, or a targeted module that already has an adapter
 * @throws {FormatError} files missing from the directory or malformed, missing or unexpected weight keys
 * @throws {ShapeError} weights whose shape does not fit the module and rank
 */
export async function loadAdapter(
  model: Module,
  source: string | AdapterFilesInput,
  opts: LoadAdapterOptions = {},
): Promise<string[]> {
  const trainable = opts.trainable ?? true;
  if (typeof trainable !== "boolean") {
    throw new ConfigError(`loadAdapter: trainable must be a boolean, got ${JSON.stringify(trainable)}`);
  }
  const files = await readAdapterSource(source);
  const cfg = parseAdapterConfig(files.config);
  const tensors = readSafetensors(files.weights).tensors;
  const plan = planLoad(model, cfg, tensors);

  for (const p of plan) {
    const layer = patchLinearModule(p.linear, {
      dim: p.r,
      alpha: p.alpha,
      scale: p.scale,
      dropout: cfg.loraDropout,
      dropoutPosition: "pre",
    });
    const values = Object.fromEntries(
      LORA_WEIGHTS.map((field, i) => [field.stateKey, p.weights[i] as StateValue]),
    );
    layer.loadStateDict(values, { strict: false });
  }
  const loaded = new Set<Tensor>();
  for (const p of plan) for (const [, t] of adapterWeights(p.linear as LinearLoRA)) loaded.add(t);
  const otherAdapters = new Set<Tensor>();
  for (const [, m] of model.namedModules()) {
    if (isLoraLinear(m)) { for (const [, t] of adapterWeights(m)) if (!loaded.has(t)) otherAdapters.add(t); }
  }
  for (const t of model.parameters()) {
    if (loaded.has(t)) t.requiresGrad = trainable;
    else if (!otherAdapters.has(t)) t.requiresGrad = false;
  }
  return plan.map((p) => p.name);
}
