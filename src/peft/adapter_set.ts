/**
 * Several named adapters on one Linear, and how a layer routes its input among them.
 *
 * A layer's named adapters live in one {@link LayerAdapters} map per Linear, kept outside the module tree
 * (a WeakMap keyed by the layer), so the tree shows only the active adapter's `lora_A` / `lora_B` children
 * while every other adapter stays resident beside them, its weights untouched. Switching the active adapter
 * moves adapter fields only; the base weight and bias tensors are never moved or copied.
 *
 * Routing is a per-layer override of the active adapter for one forward (or one generation): "base" runs
 * the plain Linear (PEFT's disabled adapters), "rows" gives each batch row its own adapter or none (PEFT's
 * `adapter_names`). A mixed-batch kernel needs exactly what this file holds: per layer, every adapter by
 * name, and per forward, each row's adapter.
 * @module
 */
import type { Linear } from "../nn/layers.ts";
import type { LoraAdapter } from "./lora_fields.ts";

/** The named adapters of one layer, in the order they were added. */
export type LayerAdapters = Map<string, LoraAdapter>;

/** How a layer computes its output for the forward in flight. */
export type LayerRouting =
  | { readonly kind: "base" }
  | {
    readonly kind: "rows";
    /** One entry per batch row: that row's adapter at this layer, or null for the base output. */
    readonly rows: readonly (LoraAdapter | null)[];
  };

const ADAPTERS = new WeakMap<Linear, LayerAdapters>();
const ROUTING = new WeakMap<Linear, LayerRouting>();

/** The named adapters resident on `layer` (created empty on first use). */
export function layerAdapters(layer: Linear): LayerAdapters {
  let set = ADAPTERS.get(layer);
  if (!set) {
    set = new Map();
    ADAPTERS.set(layer, set);
  }
  return set;
}

/** Whether `layer` holds any named adapter. */
export function hasLayerAdapters(layer: Linear): boolean {
  return (ADAPTERS.get(layer)?.size ?? 0) > 0;
}

/** Forgets every named adapter of `layer` (their tensors are the caller's to dispose). */
export function clearLayerAdapters(layer: Linear): void {
  ADAPTERS.delete(layer);
}

/** The routing override of `layer`, or null when it runs its active adapter as usual. */
export function layerRouting(layer: Linear): LayerRouting | null {
  return ROUTING.get(layer) ?? null;
}

/** Sets (or with null, clears) the routing override of `layer`. */
export function setLayerRouting(layer: Linear, routing: LayerRouting | null): void {
  if (routing === null) ROUTING.delete(layer);
  else ROUTING.set(layer, routing);
}
