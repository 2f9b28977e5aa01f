/**
 * Quantized frozen bases (QLoRA): {@link quantizeLinear} packs one Linear's weight as NF4 or int8 on its
 * own device and frees the dense weight; {@link quantizeModel} does it to every Linear of a model but its
 * output head. The quantized Linear's forward dequantizes inside its GEMMs (src/nn/quantized_linear.ts);
 * LoRA layers patched onto it keep that forward (src/peft). {@link dequantizeLinear} is the way back, to a
 * dense weight (merges use it: a merged adapter lands in a dequantized weight, never re-quantized).
 * @module
 */
import { Linear, type LinearQuantization } from "./layers.ts";
import type { Module } from "./module.ts";
import { adapterKind } from "./adapter_hook.ts";
import { packWeight } from "./quantized_linear.ts";
import type { DType } from "../core/dtype.ts";
import { ConfigError, DTypeError } from "../core/errors.ts";
import { checkOptionKeys, showValue } from "../core/options.ts";
import { QUANT_SCHEMES, type QuantScheme } from "../backend/kernels/quantize.ts";

/** Options of {@link quantizeLinear} (and `fromPretrained`'s `quantize`). */
export interface QuantizeOptions {
  /** "nf4" (QLoRA's 4-bit NormalFloat, per block absmax) or "int8" (per output row absmax / 127). */
  scheme: QuantScheme;
  /** NF4 elements per absmax (default 64, QLoRA's); ignored by int8, whose block is a row. */
  blockSize?: number;
}

/** Options of {@link quantizeModel}. */
export interface QuantizeModelOptions extends QuantizeOptions {
  /**
   * Module names left dense, beside `lm_head`: a full dotted name ("model.layers.0.mlp.down_proj") or a
   * last component ("down_proj").
   */
  exclude?: string[];
}

/** Checks quantize options; returns the scheme and block size (ConfigError naming a bad value). */
export function checkQuantizeOptions(
  options: unknown,
  where: string,
  extraKeys: readonly string[] = [],
): LinearQuantization {
  if (options === null || typeof options !== "object") {
    throw new ConfigError(
      `${where}: options must be an object { scheme, blockSize? }, got ${showValue(options)}`,
    );
  }
  const opts = checkOptionKeys(
    options,
    ["scheme", "blockSize", ...extraKeys],
    where,
  ) as unknown as QuantizeOptions;
  if (!QUANT_SCHEMES.includes(opts.scheme)) {
    throw new ConfigError(`${where}: unknown scheme ${showValue(opts.scheme)} (expected "nf4" or "int8")`);
  }
  const blockSize = opts.blockSize ?? 64;
  if (typeof blockSize !== "number" || !Number.isInteger(blockSize) || blockSize < 2) {
    throw new ConfigError(
      `${where}: blockSize must be an integer of at least 2, got ${showValue(blockSize)}`,
    );
  }
  return { scheme: opts.scheme, blockSize };
}

/** Why `linear` cannot be quantized, or null. */
function refusal(linear: Linear, name: string): string | null {
  const what = `${name === "" ? "" : `${name}: `}this Linear [${linear.outFeatures}, ${linear.inFeatures}]`;
  const kind = adapterKind(linear);
  if (kind !== null) {
    return `${what} carries a ${kind} adapter; quantize the base before patching adapters onto it`;
  }
  if (linear.quantization !== null) return `${what} is already quantized (${linear.quantization.scheme})`;
  if (linear.weight.isMeta) return `${what} has no weight values yet (load them before quantizing)`;
  return null;
}

function checkWeightDType(dtype: DType, where: string): void {
  if (dtype === "f64") throw new DTypeError(`${where}: weights are quantized from f32 or f16, got f64`);
}

/** Packs the weight and swaps it in; the options are already checked. */
function quantizeChecked(linear: Linear, q: LinearQuantization): void {
  const { packed, layout } = packWeight(linear.weight, q.scheme, q.blockSize);
  linear.weight.dispose();
  linear.weight = packed;
  linear.quantization = { scheme: q.scheme, blockSize: layout.block };
  linear._quantLayout = layout;
  if (linear.bias) linear.bias.requiresGrad = false;
}

/**
 * Quantizes `linear`'s weight in place (NF4 in blocks of `blockSize`, or int8 per output row) on its
 * device, frees the dense weight and freezes the layer; returns `linear`. Synchronous: on WebGPU it queues
 * the packing kernels. A Linear carrying an adapter, already quantized, or not yet loaded is a ConfigError.
 */
export function quantizeLinear(linear: Linear, options: QuantizeOptions): Linear {
  const where = "quantizeLinear";
  if (!(linear instanceof Linear)) {
    throw new ConfigError(
      `${where}: expected a Linear, got ${(linear as object)?.constructor?.name ?? linear}`,
    );
  }
  const q = checkQuantizeOptions(options, where);
  const why = refusal(linear, "");
  if (why !== null) throw new ConfigError(`${where}: ${why}`);
  checkWeightDType(linear.weight.dtype, where);
  quantizeChecked(linear, q);
  return linear;
}

/** Whether `name` is excluded by one of `exclude` (full dotted name or last component). */
function excluded(name: string, exclude: readonly string[]): boolean {
  const last = name.slice(name.lastIndexOf(".") + 1);
  return exclude.includes(name) || exclude.includes(last);
}

/**
 * Quantizes every Linear of `model` except `lm_head` and the `exclude`d names; returns how many. Every
 * layer is checked before any is changed: a Linear that carries an adapter or is already quantized is a
 * ConfigError naming it, and nothing is quantized.
 */
export function quantizeModel(model: Module, options: QuantizeModelOptions): number {
  const where = "quantizeModel";
  const q = checkQuantizeOptions(options, where, ["exclude"]);
  const exclude = options.exclude ?? [];
  if (!Array.isArray(exclude) || exclude.some((e) => typeof e !== "string")) {
    throw new ConfigError(`${where}: exclude must be an array of module names, got ${showValue(exclude)}`);
  }
  const modules = model.namedModules();
  // An adapter's own Linears (lora_A / lora_B) sit under the layer that carries it, which is refused.
  const carrier = modules.find(([, m]) => adapterKind(m) !== null);
  if (carrier) {
    throw new ConfigError(
      `${where}: ${carrier[0] || "(the model itself)"} carries a ${adapterKind(carrier[1])} adapter; ` +
        `quantize the base before patching adapters onto it`,
    );
  }
  const targets = modules.filter((e): e is [string, Linear] =>
    e[1] instanceof Linear && !excluded(e[0], ["lm_head", ...exclude])
  );
  for (const [name, l] of targets) {
    const why = refusal(l, name);
    if (why !== null) throw new ConfigError(`${where}: ${why}`);
    checkWeightDType(l.weight.dtype, `${where}: ${name}`);
  }
  for (const [, l] of targets) quantizeChecked(l, q);
  return targets.length;
}

/**
 * Replaces a quantized Linear's packed weight by its dequantized values (f32, or `dtype`) and makes it a
 * plain dense Linear again (frozen); a no-op on a dense one. The values are the dequantized ones: what
 * was lost to quantization stays lost.
 */
export function dequantizeLinear(linear: Linear, dtype: DType = "f32"): void {
  if (linear._quantLayout === null) return;
  const dense = linear.dequantizedWeight(dtype);
  linear.weight.dispose();
  linear.weight = dense;
  linear.quantization = null;
  linear._quantLayout = null;
}
