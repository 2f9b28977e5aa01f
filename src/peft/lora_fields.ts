/**
 * The one declaration of what a LoRA adapter adds to a Linear: {@link LoraFieldTable} (names, types,
 * docs) with {@link LORA_FIELDS} (each field's runtime description, held to the same keys by the
 * compiler). Building an adapter, patching it onto a layer, unpatching it, the state-dict and PEFT file
 * keys of its weights, saving, loading and the safe-merge check all walk this table, so a field added
 * here reaches every one of them; the types of a LoRA layer's fields are derived from it too.
 *
 * The table describes one adapter (its weights and settings) apart from the state of the layer that
 * carries it (dropout seed, merged flag). A LinearLoRA holds one adapter's fields as its own properties,
 * under PyTorch's names (`q_proj.lora_A.weight`). Several named adapters per layer would keep further
 * {@link LoraAdapter} records beside the active one, built, swapped in and removed by the same table.
 * @module
 */
import type { Linear } from "../nn/layers.ts";
import type { Tensor } from "../tensor/mod.ts";
import type { DropoutPosition } from "./nemo_config.ts";

/** The size of a base Linear, which is all the adapter weights' shapes depend on besides the rank. */
export interface LinearShape {
  readonly inFeatures: number;
  readonly outFeatures: number;
}

/** An adapter weight, held as the `weight` of a bias-free Linear child of the layer. */
export interface WeightField {
  readonly kind: "weight";
  /**
   * The weight's key below the layer in `stateDict()` (`<child>.weight`); PEFT's files use the same key
   * after the module path, so saving and loading derive their keys from it.
   */
  readonly stateKey: string;
  /** [rows, cols] of the weight for a base Linear of this size at rank `rank`. */
  shape(base: LinearShape, rank: number): [number, number];
  /**
   * "loraAInit": drawn as the `loraAInitMethod` option says; "zeros": zero, so that a new adapter leaves
   * the layer's output unchanged until it trains.
   */
  readonly init: "loraAInit" | "zeros";
}

/** A hyperparameter of one adapter; `T` is its type, carried for the derived types only. */
export interface SettingField<T> {
  readonly kind: "setting";
  readonly type?: T;
}

/** State of the layer rather than of one adapter, with its value right after patching. */
export interface LayerStateField<T> {
  readonly kind: "layer";
  readonly initial: T;
}

const setting = <T>(): SettingField<T> => ({ kind: "setting" });
const layerState = <T>(initial: T): LayerStateField<T> => ({ kind: "layer", initial });

/**
 * Every field a LoRA adapter adds to a Linear, in the order they are installed: the names and types the
 * rest of the library derives from. {@link LORA_FIELDS} gives each its runtime description; the compiler
 * holds the two to exactly the same keys (the explicit type also keeps the public API free of inferred types).
 */
export interface LoraFieldTable {
  /** Down-projection in → rank: a bias-free Linear child, weight [rank, in], trainable. */
  readonly lora_A: WeightField;
  /** Up-projection rank → out: a bias-free Linear child, weight [out, rank], zero at first, trainable. */
  readonly lora_B: WeightField;
  /** Rank r. */
  readonly dim: SettingField<number>;
  /** Scale numerator: scale = alpha / dim unless the scale is given. */
  readonly alpha: SettingField<number>;
  /** Multiplier of the LoRA branch (alpha / dim unless overridden, e.g. alpha / √r for rsLoRA). */
  readonly scale: SettingField<number>;
  /** Dropout probability on the LoRA branch while training. */
  readonly dropoutP: SettingField<number>;
  /** Where the dropout applies: on lora_A's input ("pre") or on the scaled branch output ("post"). */
  readonly dropoutPosition: SettingField<DropoutPosition>;
  /** Whether the forward uses the fused LoRA function (same numbers as the composed ops up to rounding). */
  readonly useFused: SettingField<boolean>;
  /** Fixes the dropout mask seed (tests, reproducibility); null draws a fresh seed per forward. */
  readonly dropoutSeed: LayerStateField<number | null>;
  /** Whether the adapter is folded into the base weight (see `merge`). */
  readonly merged: LayerStateField<boolean>;
}

/** The runtime description of every {@link LoraFieldTable} field, in installation order. */
export const LORA_FIELDS: LoraFieldTable = {
  lora_A: {
    kind: "weight",
    stateKey: "lora_A.weight",
    shape: (base, rank) => [rank, base.inFeatures],
    init: "loraAInit",
  },
  lora_B: {
    kind: "weight",
    stateKey: "lora_B.weight",
    shape: (base, rank) => [base.outFeatures, rank],
    init: "zeros",
  },
  dim: setting<number>(),
  alpha: setting<number>(),
  scale: setting<number>(),
  dropoutP: setting<number>(),
  dropoutPosition: setting<DropoutPosition>(),
  useFused: setting<boolean>(),
  dropoutSeed: layerState<number | null>(null),
  merged: layerState<boolean>(false),
};

type Fields = LoraFieldTable;

/** The runtime type of a field: a Linear child for weights, the declared type for the rest. */
type FieldValue<F> = F extends WeightField ? Linear
  : F extends SettingField<infer T> ? T
  : F extends LayerStateField<infer T> ? T
  : never;

/** Names of the adapter weights ("lora_A", "lora_B"). */
export type LoraWeightName = { [K in keyof Fields]: Fields[K] extends WeightField ? K : never }[keyof Fields];

/** Names of the per-layer state fields. */
export type LoraLayerStateName = {
  [K in keyof Fields]: Fields[K] extends LayerStateField<unknown> ? K : never;
}[keyof Fields];

/** One adapter: its weights (as Linear children) and settings, as a LoRA layer carries them. */
export type LoraAdapter = {
  -readonly [K in keyof Fields as K extends LoraLayerStateName ? never : K]: FieldValue<Fields[K]>;
};

/** What a LoRA layer holds besides its adapter. */
export type LoraLayerState = {
  -readonly [K in keyof Fields as K extends LoraLayerStateName ? K : never]: FieldValue<Fields[K]>;
};

/** One entry of {@link LORA_WEIGHTS}. */
export interface NamedWeightField extends WeightField {
  /** The layer property holding the weight's Linear child. */
  readonly name: LoraWeightName;
}

const entries = Object.entries(LORA_FIELDS) as [keyof Fields, Fields[keyof Fields]][];

/** The adapter weights, in table order. */
export const LORA_WEIGHTS: readonly NamedWeightField[] = entries.flatMap(([name, f]) =>
  f.kind === "weight" ? [{ ...f, name: name as LoraWeightName }] : []
);

/** The names of every adapter field (weights and settings), in table order. */
export const LORA_ADAPTER_KEYS: readonly (keyof LoraAdapter)[] = entries.flatMap(([name, f]) =>
  f.kind === "layer" ? [] : [name as keyof LoraAdapter]
);

/** The per-layer state fields with their values right after patching, in table order. */
export const LORA_LAYER_STATE: readonly [LoraLayerStateName, unknown][] = entries.flatMap(([name, f]) =>
  f.kind === "layer" ? [[name as LoraLayerStateName, f.initial] as [LoraLayerStateName, unknown]] : []
);

/** Every field name a patch adds to a Linear; removing them all leaves the plain layer. */
export const LORA_FIELD_NAMES: readonly (keyof Fields)[] = entries.map(([name]) => name);

/** The adapter weights of `adapter`, in table order, each with its field. */
export function adapterWeights(adapter: LoraAdapter): [NamedWeightField, Tensor][] {
  return LORA_WEIGHTS.map((f) => [f, adapter[f.name].weight]);
}

/** The Linear children holding `adapter`'s weights (never candidates for an adapter of their own). */
export function adapterChildren(adapter: LoraAdapter): Linear[] {
  return LORA_WEIGHTS.map((f) => adapter[f.name]);
}

/** The dotted key of an adapter weight of the layer at `modulePath` ("" for the layer itself). */
export function adapterWeightKey(modulePath: string, field: WeightField): string {
  return modulePath === "" ? field.stateKey : `${modulePath}.${field.stateKey}`;
}
