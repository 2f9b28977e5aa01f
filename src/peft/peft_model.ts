/**
 * PEFT's own API: {@link getPeftModel} and {@link PeftModel}, several named LoRA adapters resident on one
 * base model, as Hugging Face PEFT's `PeftModel` / `LoraModel` hold them.
 *
 * The base model is patched in place: each adapted Linear carries its active adapter as `lora_A` /
 * `lora_B` children (so `namedModules()` of the base shows them, under the base's own names) and keeps its
 * other adapters beside them (adapter_set.ts). A Linear the active adapter does not target is a plain
 * Linear at that moment. Switching adapters moves adapter fields only; base weights are never copied.
 * Matching is PEFT's everywhere here (adapter_config.ts); the seed's `applyLoraToLinearModules` keeps its own.
 * @module
 */
import type { Module } from "../nn/module.ts";
import type { Linear } from "../nn/layers.ts";
import type { Tensor } from "../tensor/mod.ts";
import type { Storage } from "../backend/backend.ts";
import { ConfigError } from "../core/errors.ts";
import { checkOptionKeys } from "../core/options.ts";
import { joinPath, writeDirAtomic } from "../io/fs.ts";
import { readSafetensors } from "../io/safetensors.ts";
import type { StateValue } from "../nn/module.ts";
import { Linear as LinearClass } from "../nn/layers.ts";
import { LoraConfig } from "./lora_config.ts";
import { type AdapterConfig, loraScale, parseAdapterConfig, patternValue } from "./adapter_config.ts";
import {
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
  type AdapterFilesInput,
  adapterRecordsToFiles,
  planLoad,
  readAdapterSource,
  targetedModules,
} from "./adapter.ts";
import {
  attachAdapter,
  checkAdapterFinite,
  currentAdapter,
  detachAdapter,
  isLoraLinear,
  type LinearLoRA,
  mergeLinearLoRA,
  newAdapter,
  unmergeLinearLoRA,
  unpatchLinearModule,
} from "./lora_linear.ts";
import { adapterWeights, LORA_WEIGHTS, type LoraAdapter } from "./lora_fields.ts";
import { clearLayerAdapters, layerAdapters, setLayerRouting } from "./adapter_set.ts";
import { markRowsStale } from "./lora_rows.ts";
import { sampleNames } from "./apply.ts";
import { type CombinationType, combineAdapters } from "./weighted.ts";

/** The row name that means "no adapter" in `adapterNames` (PEFT's `"__base__"`). */
export const BASE_ADAPTER_NAME = "__base__";

/** What PeftModel needs of a base model: a Module with a forward, and a generate for {@link PeftModel.generate}. */
export interface PeftBaseModel extends Module {
  // The options are the base model's own (labels, attentionMask, generate's sampling options, ...);
  // PeftModel passes them through untouched, so it takes any model's option types.
  // deno-lint-ignore no-explicit-any
  forward(inputIds: any, opts?: any): unknown;
  // deno-lint-ignore no-explicit-any
  generate?(promptIds: number[][], opts: any): Promise<number[][]>;
}

/** Options of {@link getPeftModel}. */
export interface GetPeftModelOptions {
  /** The first adapter's name (default "default"). */
  adapterName?: string;
}

/** Options of {@link PeftModel.fromPretrained}. */
export interface PeftFromPretrainedOptions {
  adapterName?: string;
  /** false (default): the adapter is frozen and the model put in eval mode, as PEFT's is_trainable=False. */
  trainable?: boolean;
}

/** Options of {@link PeftModel.loadAdapter}. */
export interface PeftLoadAdapterOptions {
  /** false (default): the adapter is frozen and the model put in eval mode. */
  trainable?: boolean;
}

/** Options of {@link PeftModel.setAdapter}. */
export interface SetAdapterOptions {
  /** true: the adapter stays frozen (PEFT's inference_mode); default false makes it trainable. */
  inferenceMode?: boolean;
}

/** Options of {@link PeftModel.saveAdapter}. */
export interface PeftSaveOptions {
  /** Which adapters to save (default all). */
  selectedAdapters?: string[];
  /** Recorded as base_model_name_or_path when the adapter's config has none. */
  baseModelNameOrPath?: string;
  /** Save NaN / infinite adapter weights instead of refusing with a FormatError (default false). */
  allowNonFinite?: boolean;
}

/** Options of {@link PeftModel.addWeightedAdapter}. */
export interface AddWeightedAdapterOptions {
  /** "cat" (ranks concatenated) or "linear" (equal ranks, A and B summed); PEFT's other kinds are not here. */
  combinationType: CombinationType;
}

/** Options of {@link PeftModel.forward} besides the base model's own. */
export interface PeftForwardOptions {
  /** One adapter name per batch row ("__base__": none); eval mode only, as in PEFT. */
  adapterNames?: string[];
  [option: string]: unknown;
}

const checkName = (name: unknown, where: string): string => {
  if (typeof name !== "string" || name === "") {
    throw new ConfigError(
      `${where}: an adapter name must be a non-empty string, got ${JSON.stringify(name)}`,
    );
  }
  if (name === BASE_ADAPTER_NAME) {
    throw new ConfigError(`${where}: "${BASE_ADAPTER_NAME}" is reserved for rows without an adapter`);
  }
  if (name.includes("/") || name.includes("\\") || name === "." || name === "..") {
    throw new ConfigError(`${where}: adapter name ${JSON.stringify(name)} cannot be a folder name`);
  }
  return name;
};

/** Up to five names of `names`, then how many more: error messages stay readable on big models. */
function sampleList(names: readonly string[]): string {
  const head = names.slice(0, 5).join(", ");
  return names.length > 5 ? `${head} and ${names.length - 5} more` : head;
}

/** A number with thousands separators, as Python's `{:,d}`. */
function groupDigits(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** The model_type of a model's config, when it has one (camelCased by our parser, or as in the file). */
function modelTypeOf(model: Module): string | null {
  const cfg = (model as { config?: { modelType?: unknown; model_type?: unknown } }).config;
  const t = cfg?.modelType ?? cfg?.model_type;
  return typeof t === "string" ? t : null;
}

/** Named LoRA adapters on one base model, PEFT's way (see the module docs). */
export class PeftModel<M extends PeftBaseModel = PeftBaseModel> {
  /** The patched base model (the same object the caller passed). */
  readonly baseModel: M;
  #configs = new Map<string, LoraConfig>();
  /** Every layer that carries at least one adapter, by module path. */
  #layers = new Map<string, Linear>();
  #active: string | null = null;
  #disabledDepth = 0;
  #routed = false;
  #closed = false;

  /** Wraps `model` with no adapter yet; use {@link getPeftModel} or {@link PeftModel.fromPretrained}. */
  constructor(model: M) {
    if (model === null || typeof model !== "object" || typeof model.namedModules !== "function") {
      throw new ConfigError(`PeftModel: expected a Module, got ${model}`);
    }
    this.baseModel = model;
  }

  /**
   * Loads a PEFT adapter folder (or its two files) onto `model` as adapter `adapterName` (default
   * "default") and makes it active. `trainable: false` (default) freezes it and puts the model in eval mode.
   */
  static async fromPretrained<M extends PeftBaseModel>(
    model: M,
    source: string | AdapterFilesInput,
    opts: PeftFromPretrainedOptions = {},
  ): Promise<PeftModel<M>> {
    checkOptionKeys(opts, ["adapterName", "trainable"], "PeftModel.fromPretrained");
    const name = checkName(opts.adapterName ?? "default", "PeftModel.fromPretrained");
    const pm = new PeftModel(model);
    for (const p of model.parameters()) p.requiresGrad = false;
    await pm.loadAdapter(source, name, { trainable: opts.trainable ?? false });
    pm.setAdapter(name, { inferenceMode: !(opts.trainable ?? false) });
    return pm;
  }

  /** PEFT's `peft_config`: each adapter's config, in the order added. */
  get peftConfig(): Readonly<Record<string, LoraConfig>> {
    return Object.freeze(Object.fromEntries(this.#configs));
  }

  /** The names of the adapters, in the order added. */
  get adapterNames(): string[] {
    return [...this.#configs.keys()];
  }

  /** The adapter the model runs (PEFT's `active_adapter`). */
  get activeAdapter(): string {
    this.#open("activeAdapter");
    if (this.#active === null) throw new ConfigError(`activeAdapter: the model has no adapter yet`);
    return this.#active;
  }

  /** The base model's modules, adapters included (the base's own names). */
  namedModules(): [string, Module][] {
    return this.baseModel.namedModules();
  }

  /** The base model's parameters with the active adapter's. */
  parameters(): Tensor[] {
    return this.baseModel.parameters();
  }

  /** Training mode for the whole model; returns this. */
  train(mode = true): this {
    this.baseModel.train(mode);
    return this;
  }

  /** Eval mode for the whole model; returns this. */
  eval(): this {
    return this.train(false);
  }

  // -------------------------------------------------------------------------------------------------
  // Adding, switching, removing
  // -------------------------------------------------------------------------------------------------

  /**
   * Adds a new adapter made from `config` (PEFT's matching rules, rank/alpha patterns, init) without
   * activating it; like PEFT's add_adapter it starts frozen (setAdapter makes it trainable).
   * @throws {ConfigError} a taken name, targets matching no module (the message lists module names), or a
   *   target that is not a Linear
   */
  addAdapter(name: string, config: LoraConfig): void {
    this.#open("addAdapter");
    this.#checkIdle("addAdapter");
    checkName(name, "addAdapter");
    if (!(config instanceof LoraConfig)) {
      throw new ConfigError(`addAdapter: expected a LoraConfig, got ${config}`);
    }
    if (this.#configs.has(name)) {
      throw new ConfigError(`addAdapter: an adapter named "${name}" exists already`);
    }
    const cfg = config.adapterConfig(modelTypeOf(this.baseModel));
    this.#bare(() => {
      const targets = this.#linearTargets(cfg, "addAdapter");
      const made: [string, Linear, LoraAdapter][] = [];
      try {
        for (const [path, linear] of targets) {
          const r = patternValue(cfg.rankPattern, path, cfg.r);
          const alpha = patternValue(cfg.alphaPattern, path, cfg.loraAlpha);
          const adapter = newAdapter(
            linear,
            {
              dim: r,
              alpha,
              scale: loraScale(alpha, r, cfg.useRslora),
              dropout: cfg.loraDropout,
              dropoutPosition: "pre",
            },
            `addAdapter(${path})`,
            config.initLoraWeights,
          );
          made.push([path, linear, adapter]);
        }
      } catch (e) {
        for (const [, , a] of made) for (const [, t] of adapterWeights(a)) t.dispose();
        throw e;
      }
      for (const [path, linear, adapter] of made) {
        for (const [, t] of adapterWeights(adapter)) t.requiresGrad = false;
        layerAdapters(linear).set(name, adapter);
        this.#layers.set(path, linear);
      }
    });
    // As PEFT rewrites its config: "all-linear" is recorded as the modules it resolved to, and missing
    // targets as the model type's defaults (addWeightedAdapter unions them).
    const recorded = config.targetModules === "all-linear"
      ? config.with({ targetModules: this.#pathsOf(name) })
      : config.targetModules === null && cfg.targetModules.kind === "list"
      ? config.with({ targetModules: cfg.targetModules.names })
      : config;
    this.#configs.set(name, recorded);
    if (this.#active === null) this.#active = name;
    this.#reattach();
  }

  /**
   * Loads a PEFT adapter folder (or its two files) as adapter `name`, beside the adapters already there;
   * it does not become active. Strict and all-or-nothing like the seed's loadAdapter (PEFT's matching
   * rules, rank_pattern / alpha_pattern, rsLoRA). `trainable: false` (default) freezes it and puts the
   * model in eval mode, as PEFT's load_adapter does.
   */
  async loadAdapter(
    source: string | AdapterFilesInput,
    name: string,
    opts: PeftLoadAdapterOptions = {},
  ): Promise<void> {
    this.#open("loadAdapter");
    this.#checkIdle("loadAdapter");
    checkOptionKeys(opts, ["trainable"], "loadAdapter");
    checkName(name, "loadAdapter");
    const trainable = opts.trainable ?? false;
    if (typeof trainable !== "boolean") {
      throw new ConfigError(`loadAdapter: trainable must be a boolean, got ${JSON.stringify(trainable)}`);
    }
    if (this.#configs.has(name)) {
      throw new ConfigError(`loadAdapter: an adapter named "${name}" exists already`);
    }
    const files = await readAdapterSource(source);
    if (this.#configs.has(name)) {
      throw new ConfigError(`loadAdapter: an adapter named "${name}" exists already`);
    }
    const text = typeof files.config === "string" ? files.config : new TextDecoder().decode(files.config);
    const cfg = parseAdapterConfig(text);
    const config = LoraConfig.fromDict(JSON.parse(text));
    const tensors = readSafetensors(files.weights).tensors;
    this.#bare(() => {
      const plan = planLoad(this.baseModel, cfg, tensors);
      const made: [string, Linear, LoraAdapter][] = [];
      try {
        for (const p of plan) {
          const fresh = newAdapter(p.linear, {
            dim: p.r,
            alpha: p.alpha,
            scale: p.scale,
            dropout: cfg.loraDropout,
            dropoutPosition: "pre",
          }, `loadAdapter(${p.name})`);
          const layer = attachAdapter(p.linear, fresh);
          try {
            layer.loadStateDict(
              Object.fromEntries(LORA_WEIGHTS.map((f, i) => [f.stateKey, p.weights[i] as StateValue])),
              { strict: false },
            );
          } finally {
            made.push([p.name, p.linear, detachAdapter(layer)]);
          }
        }
      } catch (e) {
        for (const [, , a] of made) for (const [, t] of adapterWeights(a)) t.dispose();
        throw e;
      }
      for (const [path, linear, adapter] of made) {
        for (const [, t] of adapterWeights(adapter)) t.requiresGrad = trainable;
        layerAdapters(linear).set(name, adapter);
        this.#layers.set(path, linear);
      }
    });
    this.#configs.set(name, config);
    if (this.#active === null) this.#active = name;
    this.#reattach();
    if (!trainable) this.baseModel.eval();
  }

  /**
   * PEFT's `hotswap_adapter`: replaces the weights of the loaded adapter `name` by those of a PEFT adapter
   * folder (or its two files), keeping every adapter tensor object and the device's live bytes as they
   * were, so a serving loop can swap adapters without rebuilding anything that holds them. The new
   * adapter must target the same modules with the same shapes (ranks); its alpha may differ (the scales
   * are updated, as PEFT's hot swap does). Everything is read and checked before anything is written: on
   * any error the adapter is left exactly as it was.
   *
   * The new values are written into each tensor's own storage (Backend.write: `queue.writeBuffer` into the
   * same GPU buffer), so the tensors, their storages and the device's memory stay as they were and
   * nothing is allocated. Work queued before the swap still reads the old weights. The mixed-batch
   * kernel's packed copies of the adapter are marked stale and copied again by the next mixed forward.
   * @throws {ConfigError} an unknown `name`, other target modules, or a module whose A or B shape differs
   *   (the message names the module's key and both shapes)
   */
  async hotswapAdapter(source: string | AdapterFilesInput, name: string): Promise<void> {
    const op = "hotswapAdapter";
    this.#open(op);
    this.#checkIdle(op);
    this.#known(name, op);
    const files = await readAdapterSource(source);
    this.#checkIdle(op);
    this.#known(name, op);
    const text = typeof files.config === "string" ? files.config : new TextDecoder().decode(files.config);
    const cfg = parseAdapterConfig(text);
    const config = LoraConfig.fromDict(JSON.parse(text));
    const tensors = readSafetensors(files.weights).tensors;
    const resident = new Map(this.#records(name));
    this.#bare(() => {
      const plan = planLoad(this.baseModel, cfg, tensors);
      const planned = new Set(plan.map((p) => p.name));
      const missing = [...resident.keys()].filter((p) => !planned.has(p));
      const extra = plan.map((p) => p.name).filter((p) => !resident.has(p));
      if (missing.length > 0 || extra.length > 0) {
        throw new ConfigError(
          `${op}: the new weights for "${name}" target other modules than the loaded adapter` +
            (missing.length > 0 ? `; not targeted any more: ${sampleList(missing)}` : "") +
            (extra.length > 0 ? `; newly targeted: ${sampleList(extra)}` : "") +
            ` (a hot swap keeps the targets; use deleteAdapter and loadAdapter instead)`,
        );
      }
      // Every shape (and every target's storage) is checked before anything is written, so a failure
      // leaves the adapter untouched.
      const writes: [Tensor, Storage, ArrayLike<number>][] = [];
      for (const p of plan) {
        const adapter = resident.get(p.name)!;
        LORA_WEIGHTS.forEach((field, i) => {
          const have = adapter[field.name].weight.shape, got = p.weights[i].shape;
          if (have.join() !== got.join()) {
            throw new ConfigError(
              `${op}: ${p.name}.${field.stateKey} of "${name}" is [${have}] but the new weights are [${got}] ` +
                `(r ${adapter.dim} → ${p.r}); a hot swap needs the same shapes`,
            );
          }
          const target = adapter[field.name].weight;
          writes.push([target, target.storage(op), p.weights[i].data as ArrayLike<number>]);
        });
      }
      for (const [t, storage, values] of writes) t.device.backend.write(storage, values);
      for (const p of plan) {
        markRowsStale(p.linear);
        const set = layerAdapters(p.linear);
        set.set(name, { ...set.get(name)!, alpha: p.alpha, scale: p.scale });
      }
    });
    this.#configs.set(name, config);
  }

  /**
   * Makes `name` the active adapter: every layer swaps its adapter fields (no base weight moves); layers
   * `name` does not target run the base Linear. The new adapter becomes trainable unless `inferenceMode`,
   * every other one frozen (as PEFT's set_adapter). Merged layers are unmerged first, as PEFT does.
   */
  setAdapter(name: string, opts: SetAdapterOptions = {}): void {
    this.#open("setAdapter");
    this.#checkIdle("setAdapter");
    checkOptionKeys(opts, ["inferenceMode"], "setAdapter");
    this.#known(name, "setAdapter");
    this.#bare(() => {
      this.#active = name;
    });
    const trainable = !(opts.inferenceMode ?? false);
    for (const layer of this.#layers.values()) {
      for (const [n, a] of layerAdapters(layer)) {
        for (const [, t] of adapterWeights(a)) t.requiresGrad = n === name && trainable;
      }
    }
  }

  /**
   * Removes adapter `name` and frees its weights. Deleting the active adapter activates the first
   * remaining one (as PEFT does); deleting the only adapter is a ConfigError (use unload()).
   */
  deleteAdapter(name: string): void {
    this.#open("deleteAdapter");
    this.#checkIdle("deleteAdapter");
    this.#known(name, "deleteAdapter");
    if (this.#configs.size === 1) {
      throw new ConfigError(`deleteAdapter: "${name}" is the only adapter; use unload() to remove it`);
    }
    if (this.#active === name) this.setAdapter(this.adapterNames.find((n) => n !== name)!);
    this.#bare(() => {
      for (const [path, layer] of this.#layers) {
        const set = layerAdapters(layer);
        const a = set.get(name);
        if (!a) continue;
        for (const [, t] of adapterWeights(a)) t.dispose();
        set.delete(name);
        if (set.size === 0) {
          clearLayerAdapters(layer);
          setLayerRouting(layer, null);
          this.#layers.delete(path);
        }
      }
    });
    this.#configs.delete(name);
    this.#reattach();
  }

  /**
   * Runs `fn` with every adapter off (the base model's outputs), PEFT's `disable_adapter()`; the adapters
   * come back when `fn` settles, also when it throws.
   */
  async withAdapterDisabled<T>(fn: () => T | Promise<T>): Promise<T> {
    this.#open("withAdapterDisabled");
    this.#disabledDepth++;
    this.#applyDisabled();
    try {
      return await fn();
    } finally {
      this.#disabledDepth--;
      this.#applyDisabled();
    }
  }

  // -------------------------------------------------------------------------------------------------
  // Running
  // -------------------------------------------------------------------------------------------------

  /**
   * The base model's forward with the active adapter, or with one adapter per batch row
   * (`adapterNames`, "__base__" for none; eval mode only, as PEFT's adapter_names). A row whose adapter
   * does not target a layer gets the base output there.
   */
  forward(inputIds: unknown, opts: PeftForwardOptions = {}): ReturnType<M["forward"]> {
    this.#open("forward");
    const { adapterNames, ...rest } = opts ?? {};
    if (adapterNames === undefined) return this.baseModel.forward(inputIds, rest) as ReturnType<M["forward"]>;
    const undo = this.#route(adapterNames, batchOf(inputIds), "forward");
    try {
      return this.baseModel.forward(inputIds, rest) as ReturnType<M["forward"]>;
    } finally {
      undo();
    }
  }

  /** The base model's generate with the active adapter, or one adapter per prompt row (`adapterNames`). */
  async generate(
    promptIds: number[][],
    opts: Record<string, unknown> & { adapterNames?: string[] },
  ): Promise<number[][]> {
    this.#open("generate");
    const gen = this.baseModel.generate;
    if (typeof gen !== "function") {
      throw new ConfigError(`generate: the base model ${this.baseModel.constructor.name} has no generate`);
    }
    const { adapterNames, ...rest } = opts ?? {};
    if (adapterNames === undefined) return await gen.call(this.baseModel, promptIds, rest);
    const undo = this.#route(adapterNames, Array.isArray(promptIds) ? promptIds.length : -1, "generate");
    try {
      return await gen.call(this.baseModel, promptIds, rest);
    } finally {
      undo();
    }
  }

  // -------------------------------------------------------------------------------------------------
  // Combining, counting, saving, unloading
  // -------------------------------------------------------------------------------------------------

  /**
   * A new adapter `name` combining `adapters` with `weights`, exactly as PEFT 0.21's add_weighted_adapter:
   * "cat" stacks the ranks (A_i · weight_i · scale_i rows, B_i columns, rank = Σ of each adapter's largest
   * rank), "linear" needs equal ranks and sums sign·√|w·s|·A_i and √|w·s|·B_i. The new adapter's alpha is
   * its rank, its other settings (rsLoRA, dropout, excludes) those of `adapters[0]`, its targets the union
   * of theirs; it is frozen and not activated. One adapter always combines "linear", as in PEFT.
   * Unlike PEFT (which silently does nothing), a taken `name` is a ConfigError.
   */
  addWeightedAdapter(
    adapters: string[],
    weights: number[],
    name: string,
    opts: AddWeightedAdapterOptions,
  ): void {
    this.#open("addWeightedAdapter");
    this.#checkIdle("addWeightedAdapter");
    checkOptionKeys(opts, ["combinationType"], "addWeightedAdapter");
    checkName(name, "addWeightedAdapter");
    if (this.#configs.has(name)) {
      throw new ConfigError(`addWeightedAdapter: an adapter named "${name}" exists already`);
    }
    if (!Array.isArray(adapters) || adapters.length === 0 || !Array.isArray(weights)) {
      throw new ConfigError(`addWeightedAdapter: adapters must be a non-empty list with a weights list`);
    }
    if (weights.length !== adapters.length || !weights.every(Number.isFinite)) {
      throw new ConfigError(
        `addWeightedAdapter: need one finite weight per adapter, got ${adapters.length} adapters and weights ` +
          JSON.stringify(weights),
      );
    }
    for (const a of adapters) this.#known(a, "addWeightedAdapter");
    let combination = opts?.combinationType;
    if (combination !== "cat" && combination !== "linear") {
      throw new ConfigError(
        `addWeightedAdapter: combinationType ${
          JSON.stringify(combination)
        } is not supported here ("cat" or "linear")`,
      );
    }
    if (adapters.length === 1) combination = "linear";
    const configs = adapters.map((a) => this.#configs.get(a)!);
    const ranks = configs.map((c) => Math.max(c.r, ...Object.values(c.rankPattern)));
    if (combination === "linear" && new Set(ranks).size !== 1) {
      throw new ConfigError(
        `addWeightedAdapter: "linear" needs adapters of one rank; ${
          adapters.map((a, i) => `${a}: r=${ranks[i]}`).join(", ")
        } (use "cat")`,
      );
    }
    const newRank = combination === "cat" ? ranks.reduce((s, r) => s + r, 0) : ranks[0];
    const kinds = new Set(configs.map((c) => typeof c.targetModules === "string" ? "string" : "list"));
    if (kinds.size > 1) {
      throw new ConfigError(
        `addWeightedAdapter: the adapters' targetModules mix a list and a regex string, which PEFT refuses too`,
      );
    }
    const targets = kinds.has("string")
      ? configs.map((c) => `(${c.targetModules})`).join("|")
      : [...new Set(configs.flatMap((c) => c.targetModules as string[]))];
    const config = configs[0].with({
      r: newRank,
      loraAlpha: newRank,
      targetModules: targets,
      rankPattern: {},
      alphaPattern: {},
    });
    const cfg = config.adapterConfig();
    this.#bare(() => {
      const made: [string, Linear, LoraAdapter][] = [];
      try {
        for (const [path, linear] of this.#linearTargets(cfg, "addWeightedAdapter")) {
          const sources = adapters.map((a) => layerAdapters(linear).get(a) ?? null);
          const adapter = newAdapter(linear, {
            dim: newRank,
            alpha: newRank,
            scale: loraScale(newRank, newRank, cfg.useRslora),
            dropout: cfg.loraDropout,
            dropoutPosition: "pre",
          }, `addWeightedAdapter(${path})`);
          made.push([path, linear, adapter]);
          combineAdapters(adapter, sources, weights, combination, `addWeightedAdapter(${path})`);
        }
      } catch (e) {
        for (const [, , a] of made) for (const [, t] of adapterWeights(a)) t.dispose();
        throw e;
      }
      for (const [path, linear, adapter] of made) {
        for (const [, t] of adapterWeights(adapter)) t.requiresGrad = false;
        layerAdapters(linear).set(name, adapter);
        this.#layers.set(path, linear);
      }
    });
    this.#configs.set(name, config);
    this.#reattach();
  }

  /** [trainable, all] parameter counts, every resident adapter included (PEFT's get_nb_trainable_parameters). */
  trainableParameterCounts(): { trainable: number; all: number } {
    this.#open("printTrainableParameters");
    const seen = new Set<Tensor>();
    let trainable = 0, all = 0;
    const count = (t: Tensor) => {
      if (seen.has(t)) return;
      seen.add(t);
      all += t.size;
      if (t.requiresGrad) trainable += t.size;
    };
    for (const t of this.baseModel.parameters()) count(t);
    for (const layer of this.#layers.values()) {
      for (const a of layerAdapters(layer).values()) for (const [, t] of adapterWeights(a)) count(t);
    }
    return { trainable, all };
  }

  /**
   * PEFT's line "trainable params: N || all params: M || trainable%: P" (digits grouped, P to 4 places),
   * printed and returned.
   */
  printTrainableParameters(): string {
    const { trainable, all } = this.trainableParameterCounts();
    const line = `trainable params: ${groupDigits(trainable)} || all params: ${groupDigits(all)} || ` +
      `trainable%: ${(100 * trainable / all).toFixed(4)}`;
    console.log(line);
    return line;
  }

  /**
   * Saves the adapters in PEFT's layout: "default" in `dir` itself, every other adapter in `dir/<name>/`,
   * each as adapter_model.safetensors + adapter_config.json (exact module names, per-module rank/alpha as
   * patterns), so PEFT's from_pretrained / load_adapter(subfolder) read them back.
   */
  async saveAdapter(dir: string, opts: PeftSaveOptions = {}): Promise<void> {
    this.#open("saveAdapter");
    checkOptionKeys(opts, ["selectedAdapters", "baseModelNameOrPath", "allowNonFinite"], "saveAdapter");
    if (typeof dir !== "string" || dir === "") {
      throw new ConfigError(`saveAdapter: dir must be a non-empty path string, got ${JSON.stringify(dir)}`);
    }
    const names = opts.selectedAdapters ?? this.adapterNames;
    for (const n of names) this.#known(n, "saveAdapter");
    // Paths relative to dir; writeDirAtomic saves them all-or-nothing (one new folder, one rename).
    const files: Record<string, Uint8Array | string> = {};
    for (const n of names) {
      const records = this.#records(n);
      const config = this.#configs.get(n)!;
      const out = await adapterRecordsToFiles(this.baseModel, records, {
        baseModelNameOrPath: config.baseModelNameOrPath ?? opts.baseModelNameOrPath,
        allowNonFinite: opts.allowNonFinite,
      });
      const folder = n === "default" ? "" : n;
      files[joinPath(folder, ADAPTER_WEIGHTS_NAME)] = out[ADAPTER_WEIGHTS_NAME];
      files[joinPath(folder, ADAPTER_CONFIG_NAME)] = out[ADAPTER_CONFIG_NAME];
    }
    await writeDirAtomic(dir, files, { op: "saveAdapter" });
  }

  /**
   * Folds the active adapter into the base weights, frees every adapter and returns the plain base model
   * (PEFT's merge_and_unload). Non-finite active adapter weights refuse the merge before any change.
   */
  async mergeAndUnload(): Promise<M> {
    this.#open("mergeAndUnload");
    this.#checkIdle("mergeAndUnload");
    for (const [path, layer] of this.#layers) {
      if (isLoraLinear(layer) && !layer.merged) await checkAdapterFinite(layer, "mergeAndUnload", path);
    }
    for (const layer of this.#layers.values()) if (isLoraLinear(layer)) await mergeLinearLoRA(layer);
    return this.#unloadAll();
  }

  /** Removes every adapter without merging and returns the plain base model (PEFT's unload). */
  unload(): M {
    this.#open("unload");
    this.#checkIdle("unload");
    for (const layer of this.#layers.values()) {
      if (isLoraLinear(layer) && layer.merged) {
        throw new ConfigError(`unload: a layer's adapter is merged; unmerge it or use mergeAndUnload()`);
      }
    }
    return this.#unloadAll();
  }

  /** The adapter records of `name` per module path, in model order. */
  adapterLayers(name: string): [string, LoraAdapter][] {
    this.#open("adapterLayers");
    this.#known(name, "adapterLayers");
    return this.#records(name);
  }

  // -------------------------------------------------------------------------------------------------
  // Internals
  // -------------------------------------------------------------------------------------------------

  #records(name: string): [string, LoraAdapter][] {
    this.#syncActive();
    const out: [string, LoraAdapter][] = [];
    for (const [path, layer] of this.#layers) {
      const a = layerAdapters(layer).get(name);
      if (a) out.push([path, a]);
    }
    const order = new Map(this.baseModel.namedModules().map(([n], i) => [n, i]));
    return out.sort((x, y) => (order.get(x[0]) ?? 0) - (order.get(y[0]) ?? 0));
  }

  #pathsOf(name: string): string[] {
    return this.#records(name).map(([p]) => p);
  }

  #open(op: string): void {
    if (this.#closed) throw new ConfigError(`${op}: this PeftModel was unloaded; wrap the model again`);
  }

  #checkIdle(op: string): void {
    if (this.#routed) {
      throw new ConfigError(
        `${op}: a mixed-batch generate (adapterNames) is running on this model; wait for it`,
      );
    }
  }

  #known(name: string, op: string): void {
    if (!this.#configs.has(name)) {
      throw new ConfigError(
        `${op}: no adapter named ${JSON.stringify(name)}; adapters: ${JSON.stringify(this.adapterNames)}`,
      );
    }
  }

  /** Writes the active adapter's current fields back into its layers' adapter maps. */
  #syncActive(): void {
    if (this.#active === null) return;
    for (const layer of this.#layers.values()) {
      if (isLoraLinear(layer)) layerAdapters(layer).set(this.#active, currentAdapter(layer));
    }
  }

  /** Runs `fn` with every adapter detached (the model's Linears plain); adapters stay in their maps. */
  #bare(fn: () => void): void {
    this.#syncActive();
    for (const layer of this.#layers.values()) {
      if (!isLoraLinear(layer)) continue;
      if (layer.merged) unmergeLinearLoRA(layer);
      detachAdapter(layer);
    }
    try {
      fn();
    } finally {
      this.#reattach();
    }
  }

  /** Puts the active adapter onto every layer it targets (idempotent). */
  #reattach(): void {
    for (const layer of this.#layers.values()) {
      if (isLoraLinear(layer)) continue;
      const a = this.#active === null ? undefined : layerAdapters(layer).get(this.#active);
      if (a) attachAdapter(layer, a);
    }
    this.#applyDisabled();
  }

  #applyDisabled(): void {
    for (const layer of this.#layers.values()) {
      setLayerRouting(layer, this.#disabledDepth > 0 ? { kind: "base" } : null);
    }
  }

  /** The Linears `cfg` targets on the bare model, PEFT's way; a ConfigError when none or a non-Linear. */
  #linearTargets(cfg: AdapterConfig, op: string): [string, Linear][] {
    const targets = targetedModules(this.baseModel, cfg);
    if (targets.length === 0) {
      throw new ConfigError(
        `${op}: targetModules matches no module of the model (PEFT's rules: a list entry matches a name ` +
          `exactly or as a ".suffix", a string is a regex over the whole name); modules are: ${
            sampleNames(this.baseModel)
          }`,
      );
    }
    for (const [name, m] of targets) {
      if (!(m instanceof LinearClass)) {
        throw new ConfigError(
          `${op}: targetModules matches ${name}, a ${m.constructor.name}; only Linear modules take LoRA here`,
        );
      }
    }
    return targets as [string, Linear][];
  }

  /** Routes each batch row to its adapter on every layer; returns the undo. */
  #route(adapterNames: unknown, batch: number, op: string): () => void {
    this.#checkIdle(op);
    if (!Array.isArray(adapterNames) || !adapterNames.every((n) => typeof n === "string")) {
      throw new ConfigError(
        `${op}: adapterNames must be a list of adapter names, got ${JSON.stringify(adapterNames)}`,
      );
    }
    if (this.baseModel.training) {
      throw new ConfigError(
        `${op}: adapterNames needs eval mode (call eval() first), as PEFT refuses adapter_names while training`,
      );
    }
    if (this.#disabledDepth > 0) {
      throw new ConfigError(
        `${op}: adapterNames inside withAdapterDisabled has no meaning; use "__base__" rows`,
      );
    }
    if (adapterNames.length !== batch) {
      throw new ConfigError(
        `${op}: adapterNames has ${adapterNames.length} names but the batch has ${batch} rows (one name per row)`,
      );
    }
    const unknown = [...new Set(adapterNames)].filter((n) =>
      n !== BASE_ADAPTER_NAME && !this.#configs.has(n)
    );
    if (unknown.length > 0) {
      throw new ConfigError(
        `${op}: adapterNames names adapters that do not exist: ${JSON.stringify(unknown)}; adapters: ${
          JSON.stringify(this.adapterNames)
        } (and "${BASE_ADAPTER_NAME}")`,
      );
    }
    for (const layer of this.#layers.values()) {
      if (isLoraLinear(layer) && layer.merged) {
        throw new ConfigError(
          `${op}: adapterNames cannot be used while an adapter is merged; unmerge it first`,
        );
      }
    }
    this.#syncActive();
    const temporary: LinearLoRA[] = [];
    for (const layer of this.#layers.values()) {
      const set = layerAdapters(layer);
      const rows = adapterNames.map((n) => set.get(n) ?? null);
      const first = rows.find((a) => a !== null);
      if (!isLoraLinear(layer) && first) temporary.push(attachAdapter(layer, first));
      setLayerRouting(layer, { kind: "rows", rows });
    }
    this.#routed = true;
    return () => {
      this.#routed = false;
      for (const layer of this.#layers.values()) setLayerRouting(layer, null);
      for (const layer of temporary) detachAdapter(layer);
      this.#applyDisabled();
    };
  }

  #unloadAll(): M {
    for (const layer of this.#layers.values()) {
      setLayerRouting(layer, null);
      const active = isLoraLinear(layer) ? layer : null;
      for (const [n, a] of layerAdapters(layer)) {
        if (n === this.#active && active) continue;
        for (const [, t] of adapterWeights(a)) t.dispose();
      }
      clearLayerAdapters(layer);
      if (active) unpatchLinearModule(active);
    }
    this.#layers.clear();
    this.#configs.clear();
    this.#active = null;
    this.#closed = true;
    return this.baseModel;
  }
}

/** The batch size of a forward's input ids (number[][] or { shape }); -1 when it cannot tell. */
function batchOf(ids: unknown): number {
  if (Array.isArray(ids)) return ids.length;
  const shape = (ids as { shape?: unknown })?.shape;
  return Array.isArray(shape) && typeof shape[0] === "number" ? shape[0] : -1;
}

/**
 * PEFT's get_peft_model: patches `model` in place with a new adapter from `config` (named "default"
 * unless `adapterName`), freezes every base parameter, and makes the adapter active and trainable (frozen
 * when the config says inferenceMode).
 */
export function getPeftModel<M extends PeftBaseModel>(
  model: M,
  config: LoraConfig,
  opts: GetPeftModelOptions = {},
): PeftModel<M> {
  checkOptionKeys(opts, ["adapterName"], "getPeftModel");
  const name = checkName(opts.adapterName ?? "default", "getPeftModel");
  for (const [path, m] of model.namedModules()) {
    if (isLoraLinear(m)) {
      throw new ConfigError(
        `getPeftModel: ${
          path || "the model"
        } already carries a LoRA adapter (mergeAndUnload or unload it first)`,
      );
    }
  }
  const pm = new PeftModel(model);
  pm.addAdapter(name, config);
  for (const p of model.parameters()) p.requiresGrad = false;
  pm.setAdapter(name, { inferenceMode: config.inferenceMode });
  return pm;
}
