/**
 * A hook by which a module says it carries parameters that no base-model checkpoint holds, such as an
 * adapter patched onto a layer. Base-model savers (src/models) ask it without knowing any adapter kind,
 * and adapter layers (src/peft) answer it, so models and peft need not import each other.
 * @module
 */
import type { Module } from "./module.ts";
import type { Tensor } from "../tensor/mod.ts";

/** Key of the method a module defines to name the adapter it carries (e.g. "LoRA"). */
export const ADAPTER_KIND: unique symbol = Symbol("adapterKind");

/** A module that carries an adapter: its parameters are the base layer's plus the adapter's. */
export interface AdapterCarrier {
  /** A short name of the adapter kind, for messages ("LoRA"). */
  [ADAPTER_KIND](): string;
}

/** The adapter kind `m` carries, or null for a module that is all base model. */
export function adapterKind(m: Module): string | null {
  const hook = (m as Partial<AdapterCarrier>)[ADAPTER_KIND];
  return typeof hook === "function" ? hook.call(m) : null;
}

/** The modules of `model` that carry an adapter, as [dotted path, adapter kind], in module order. */
export function modulesWithAdapters(model: Module): [string, string][] {
  return model.namedModules().flatMap(([name, m]) => {
    const kind = adapterKind(m);
    return kind === null ? [] : [[name, kind] as [string, string]];
  });
}

/** Key of the method an adapted Linear defines to say how a decoding step may run it ({@link decodeParts}). */
export const DECODE_PARTS: unique symbol = Symbol("decodeParts");

/**
 * How a decoding step may run an adapted Linear: its base weight, plus `scale · B(A(x))` when `lora` is
 * set (A [r, in], B [out, r]); `lora` null means the base alone (a merged adapter, or one switched off).
 */
export interface DecodeParts {
  readonly lora: { readonly a: Tensor; readonly b: Tensor; readonly scale: number } | null;
}

/**
 * The decode parts of `m`: what its {@link DECODE_PARTS} method answers, or null when it has none or
 * its forward is more than base plus LoRA now (dropout while training, rows routed to several adapters).
 */
export function decodeParts(m: Module): DecodeParts | null {
  const hook = (m as { [DECODE_PARTS]?: () => DecodeParts | null })[DECODE_PARTS];
  return typeof hook === "function" ? hook.call(m) : null;
}
