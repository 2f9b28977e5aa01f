/**
 * Checks of option objects shared by layers, models, optimizers and the training loop. JavaScript callers
 * get no type checking, so a misspelt option (`weight_decay` for `weightDecay`, `rank` for `dim`) would
 * otherwise be ignored without a word and the default used instead.
 * @module
 */
import { ConfigError } from "./errors.ts";

/** A value as a message shows it: numbers as JavaScript prints them (NaN, Infinity), the rest as JSON. */
export function showValue(v: unknown): string {
  if (typeof v === "number" || typeof v === "bigint" || v === undefined) return String(v);
  if (typeof v === "function") return "a function";
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v); // cyclic objects
  }
}

/**
 * Returns `opts` as a plain record (undefined and null give `{}`), throwing a ConfigError naming `where`
 * when it is not an object or holds a key outside `known`.
 */
export function checkOptionKeys(
  opts: unknown,
  known: readonly string[],
  where: string,
): Record<string, unknown> {
  if (opts === undefined || opts === null) return {};
  if (typeof opts !== "object" || Array.isArray(opts)) {
    throw new ConfigError(`${where}: options must be an object, got ${showValue(opts)}`);
  }
  for (const key of Object.keys(opts)) {
    if (!known.includes(key)) {
      throw new ConfigError(
        `${where}: unknown option ${JSON.stringify(key)} (known: ${known.join(", ")})`,
      );
    }
  }
  return opts as Record<string, unknown>;
}

/** Throws a ConfigError naming `where` and `name` unless `value` is undefined or a boolean. */
export function checkOptionalBoolean(value: unknown, name: string, where: string): void {
  if (value !== undefined && typeof value !== "boolean") {
    throw new ConfigError(`${where}: ${name} must be a boolean, got ${showValue(value)}`);
  }
}

/** Throws a ConfigError naming `where` and `name` unless `value` is undefined or an integer (a seed). */
export function checkOptionalSeed(value: unknown, name: string, where: string): void {
  if (value !== undefined && !Number.isSafeInteger(value)) {
    throw new ConfigError(`${where}: ${name} must be an integer, got ${showValue(value)}`);
  }
}
