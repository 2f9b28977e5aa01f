/**
 * A whole model's LoRA lifecycle, each step beside its inverse: {@link applyLoraToLinearModules} freezes
 * everything and patches each matched Linear; {@link mergeAndUnload} folds every adapter into its base
 * weight and unpatches the layer. The per-layer steps are in lora_linear.ts.
 * @module
 */
import type { Module } from "../nn/module.ts";
import { Linear } from "../nn/layers.ts";
import { ModuleMatcher } from "./matcher.ts";
import type { PeftConfig } from "./nemo_config.ts";
import {
  adapterModules,
  checkAdapterFinite,
  isLoraLinear,
  type LinearLoRA,
  mergeLinearLoRA,
  patchLinearModule,
  unpatchLinearModule,
} from "./lora_linear.ts";
import { ConfigError } from "../core/errors.ts";

/** Whether a model is a causal LM (its config's first architecture or its class name says CausalLM). */
export function isCausalLM(model: Module): boolean {
  const cfg = (model as { config?: { architectures?: unknown } }).config;
  const arch = Array.isArray(cfg?.architectures) ? String(cfg.architectures[0]) : "";
  return arch.includes("CausalLM") || model.constructor.name.includes("CausalLM");
}

/** A short sample of module names, for error messages. */
export function sampleNames(model: Module, n = 8): string {
  const names = model.namedModules().map(([name]) => name).filter((x) => x !== "");
  return names.slice(0, n).join(", ") + (names.length > n ? `, … (${names.length} modules)` : "");
}

/**
 * Freezes every parameter of `model`, patches each Linear the config matches, and returns the count.
 * As in NeMo AutoModel's `apply_lora_to_linear_modules`, only Linear modules are candidates: a pattern such as `*.layers.1.*` also names the
 * layer's containers and norms, which are passed over. An adapter's own lora_A / lora_B are never
 * candidates. Matching no Linear, or matching one that already has an adapter, is a ConfigError thrown
 * before anything is frozen or patched.
 */
export function applyLoraToLinearModules(model: Module, config: PeftConfig): number {
  const matcher = new ModuleMatcher(
    config.targetModules,
    config.excludeModules,
    config.matchAllLinear,
    isCausalLM(model),
  );
  const modules = model.namedModules();
  const adapterParts = adapterModules(model);
  const matched = modules.filter(([name, m]) =>
    name !== "" && m instanceof Linear && !adapterParts.has(m) && matcher.match(m, name)
  );
  if (matched.length === 0) {
    throw new ConfigError(
      `applyLoraToLinearModules: no Linear module matches targetModules=${
        JSON.stringify(matcher.targetModules)
      } excludeModules=${JSON.stringify(matcher.excludeModules)} matchAllLinear=${matcher.matchAllLinear}; ` +
        `patterns match whole dotted names (e.g. "*.q_proj"); modules are: ${sampleNames(model)}`,
    );
  }
  const already = matched.filter(([, m]) => isLoraLinear(m)).map(([name]) => name);
  if (already.length > 0) {
    throw new ConfigError(
      `applyLoraToLinearModules: ${already.slice(0, 8).join(", ")}${already.length > 8 ? ", …" : ""} ` +
        `already have a LoRA adapter`,
    );
  }
  for (const p of model.parameters()) p.requiresGrad = false;
  for (const [, m] of matched) {
    patchLinearModule(m as Linear, {
      dim: config.dim,
      alpha: config.alpha,
      dropout: config.dropout,
      dropoutPosition: config.dropoutPosition,
      loraAInitMethod: config.loraAInit,
      loraDtype: config.loraDtype,
      useFused: config.useFused,
    });
  }
  return matched.length;
}

/**
 * Folds every LoRA adapter of `model` into its base weight (W ← W + scale · B A) and turns each LoRA
 * layer back into a plain Linear in place, so `stateDict()` has the base model's keys again. Adapter
 * weights are checked first (PEFT's safe_merge): any NaN or Inf refuses the whole merge before any weight
 * changes, naming the module. Returns `model`. A quantized base layer comes back as a dense f32 Linear
 * holding its dequantized weight plus the adapter (documented in mergeLinearLoRA; never re-quantized).
 * @throws {FormatError} when an adapter weight holds NaN or Inf (the same class `merge()` uses)
 */
export async function mergeAndUnload<M extends Module>(model: M): Promise<M> {
  const layers = model.namedModules().filter((e): e is [string, LinearLoRA] => isLoraLinear(e[1]));
  for (const [name, l] of layers) {
    if (!l.merged) await checkAdapterFinite(l, "mergeAndUnload", name || "(the model itself)");
  }
  for (const [, l] of layers) {
    await mergeLinearLoRA(l);
    unpatchLinearModule(l);
  }
  return model;
}
