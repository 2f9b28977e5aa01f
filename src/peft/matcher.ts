/**
 * `ModuleMatcher`: which modules get LoRA. Patterns match the whole dotted module name; `*` matches any
 * run of characters and every other character is literal (NeMo AutoModel's matcher let `.` match anything, so
 * `*.layers.1.*` also hit layer 10).
 * @module
 */
import type { Module } from "../nn/module.ts";
import { Linear } from "../nn/layers.ts";
import { ConfigError } from "../core/errors.ts";

/** Compiles a `*` wildcard pattern into an anchored RegExp with every other character literal. */
export function wildcardRegExp(pattern: string): RegExp {
  const body = pattern.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\/-]/g, "\\$&")).join(".*");
  return new RegExp(`^${body}$`, "s"); // dotAll: a star spans any characters, line breaks too
}

/** Whether `pattern` (with `*` wildcards) matches all of `name`. */
export function wildcardMatch(pattern: string, name: string): boolean {
  return wildcardRegExp(pattern).test(name);
}

/** Whether `name` is a causal LM's output head (`lm_head` or `<prefix>.lm_head`). */
export function isOutputHead(name: string): boolean {
  return name === "lm_head" || name.endsWith(".lm_head");
}

/** Decides which modules of a model receive LoRA adapters. */
export class ModuleMatcher {
  readonly targetModules: string[];
  readonly excludeModules: string[];
  readonly matchAllLinear: boolean;
  readonly isCausalLM: boolean;
  #targets: RegExp[];
  #excludes: RegExp[];

  /**
   * With no targets, excludes or matchAllLinear, targets default to `*_proj` (as NeMo AutoModel's `PeftConfig` does).
   * targetModules with excludeModules, or matchAllLinear with either, is a ConfigError.
   */
  constructor(
    targetModules: string[] | string = [],
    excludeModules: string[] | string = [],
    matchAllLinear = false,
    isCausalLM = false,
  ) {
    const list = (
      v: string[] | string | null | undefined,
    ) => (v == null ? [] : typeof v === "string" ? [v] : [...v]);
    this.targetModules = list(targetModules);
    this.excludeModules = list(excludeModules);
    this.matchAllLinear = matchAllLinear;
    this.isCausalLM = isCausalLM;
    if (this.targetModules.length > 0 && this.excludeModules.length > 0) {
      throw new ConfigError(
        `ModuleMatcher: targetModules ${JSON.stringify(this.targetModules)} and excludeModules ` +
          `${JSON.stringify(this.excludeModules)} are mutually exclusive; give only one`,
      );
    }
    if (matchAllLinear && (this.targetModules.length > 0 || this.excludeModules.length > 0)) {
      throw new ConfigError(
        `ModuleMatcher: matchAllLinear cannot be combined with targetModules or excludeModules`,
      );
    }
    if (!matchAllLinear && this.targetModules.length === 0 && this.excludeModules.length === 0) {
      this.targetModules = ["*_proj"];
    }
    for (const p of [...this.targetModules, ...this.excludeModules]) {
      if (typeof p !== "string" || p.length === 0) {
        throw new ConfigError(`ModuleMatcher: patterns must be non-empty strings, got ${JSON.stringify(p)}`);
      }
    }
    this.#targets = this.targetModules.map(wildcardRegExp);
    this.#excludes = this.excludeModules.map(wildcardRegExp);
  }

  /** Whether the module at dotted path `name` should be adapted. */
  match(module: Module, name: string): boolean {
    const isLinear = module instanceof Linear;
    if (this.matchAllLinear) return isLinear && !(this.isCausalLM && isOutputHead(name));
    if (this.targetModules.length > 0) return this.#targets.some((re) => re.test(name));
    return isLinear && !this.#excludes.some((re) => re.test(name));
  }
}
