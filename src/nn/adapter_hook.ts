/**
 * A hook by which a module says it carries parameters that no base-model checkpoint holds, such as an
 * adapter patched onto a layer. Base-model savers (src/models) ask it without knowing any adapter kind,
 * and adapter layers (src/peft) answer it, so models and peft need not import each other.
 * @module
 */
import type { Module } from "./module.ts";
import type { Tensor } from "../tensor/mod.ts";
import type { LoraRowsSlot } from "../backend/kernels/lora_rows.ts";

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
 * A Linear whose batch rows go through different adapters (PEFT's `adapter_names`), as a decoding step
 * runs it: the base output for every row, then one mixed-batch kernel (`LORA_ROWS_PARTS`,
 * src/backend/kernels/lora_rows.ts) adds each row's own term. The adapters the batch uses are packed
 * one after another: every A [r_s, in] row-major in `a`, every B [out, r_s] in `b` (flat tensors of one
 * dtype), and `rows[i]` says where batch row i's adapter sits, or is null for a row left at the base
 * output (`"__base__"`, or an adapter that does not target this layer).
 *
 * The answer is the same object, over the same tensors, while the routing and the adapters' weights
 * stay as they are (a generation's every step), so a step may key what it derives from it (the table it
 * uploads) on the object's identity. Its tensors belong to the layer: a step only reads them.
 */
export interface RoutedLora {
  /** The packed A of every adapter the batch uses. */
  readonly a: Tensor;
  /** The packed B of every adapter the batch uses (a's dtype). */
  readonly b: Tensor;
  /** One entry per batch row: its adapter's rank, offsets into a and b, and scale; null for none. */
  readonly rows: readonly (LoraRowsSlot | null)[];
}

/**
 * How a decoding step may run an adapted Linear: its base weight, plus `scale · B(A(x))` when `lora` is
 * set (A [r, in], B [out, r]), or plus each row's own adapter term when `routed` is set (then `lora` is
 * null); neither means the base alone (a merged adapter, one switched off, rows all at the base).
 */
export interface DecodeParts {
  readonly lora: { readonly a: Tensor; readonly b: Tensor; readonly scale: number } | null;
  /** The rows' own adapters ({@link RoutedLora}), for a batch routed to several. */
  readonly routed?: RoutedLora;
}

/**
 * The decode parts of `m`: what its {@link DECODE_PARTS} method answers, or null when it has none or
 * its forward is more than base plus LoRA terms now (dropout while training, routed adapters the
 * mixed-batch kernel cannot take).
 */
export function decodeParts(m: Module): DecodeParts | null {
  const hook = (m as { [DECODE_PARTS]?: () => DecodeParts | null })[DECODE_PARTS];
  return typeof hook === "function" ? hook.call(m) : null;
}
