/**
 * `LinearLoRA`: a Linear plus a low-rank update, y = x Wᵀ + b + scale · drop(B(A(x))), after NeMo
 * AutoModel's LinearLoRA module. It keeps the wrapped layer's weight and bias at the same names
 * (checkpoints keep their structure) and freezes them; the adapter's fields are those of
 * {@link LORA_FIELDS} (`lora_A` [dim, in] and `lora_B` [out, dim] as `Linear` children, B zero at first).
 *
 * A layer's whole lifecycle lives here, each step beside its inverse: {@link patchLinearModule} /
 * {@link unpatchLinearModule}, {@link mergeLinearLoRA} / {@link unmergeLinearLoRA}.
 * @module
 */
import { Linear } from "../nn/layers.ts";
import { type Module, reprFloat } from "../nn/module.ts";
import { ADAPTER_KIND, DECODE_PARTS, type DecodeParts } from "../nn/adapter_hook.ts";
import {
  add,
  cast,
  concat,
  dropout as dropoutOp,
  embedding,
  linear,
  matmul,
  noGrad,
  reshape,
  scale as scaleOp,
  sub,
  type Tensor,
  tensor,
  zeros,
} from "../tensor/mod.ts";
import type { DType } from "../core/dtype.ts";
import { nextSeed, Rng } from "../core/random.ts";
import { loraLinear } from "./lora_function.ts";
import { quantizedLinear } from "../nn/quantized_linear.ts";
import { dequantizeLinear } from "../nn/quantize.ts";
import { type DropoutPosition, type LoraAInit, parseDType, validateLoraOptions } from "./nemo_config.ts";
import {
  adapterChildren,
  adapterWeights,
  LORA_ADAPTER_KEYS,
  LORA_FIELD_NAMES,
  LORA_LAYER_STATE,
  LORA_WEIGHTS,
  type LoraAdapter,
  type LoraLayerState,
  type LoraWeightName,
} from "./lora_fields.ts";
import { ConfigError, FormatError, ShapeError } from "../core/errors.ts";
import { layerRouting } from "./adapter_set.ts";
import { canFuseRows, fusedRowRoutedForward, routedDecodeParts } from "./lora_rows.ts";
import { checkOptionalBoolean, checkOptionalSeed, checkOptionKeys } from "../core/options.ts";

/** Names of {@link LinearLoRAOptions}. */
const LORA_OPTION_KEYS = [
  "dim",
  "alpha",
  "dropout",
  "dropoutPosition",
  "loraAInitMethod",
  "loraDtype",
  "useFused",
  "seed",
  "scale",
] as const;

/** Options of {@link LinearLoRA} and {@link patchLinearModule}. */
export interface LinearLoRAOptions {
  /** Rank r (default 8). */
  dim?: number;
  /** Scale numerator: scale = alpha / dim (default 32). */
  alpha?: number;
  dropout?: number;
  dropoutPosition?: DropoutPosition;
  loraAInitMethod?: LoraAInit;
  /** dtype of lora_A / lora_B (default: the base weight's). */
  loraDtype?: DType | string | null;
  /** Fused kernels (default true); the composed path gives the same numbers up to rounding. */
  useFused?: boolean;
  /** Seed of lora_A's initialisation. */
  seed?: number;
  /** Overrides scale (PEFT's rsLoRA uses alpha / √r); default alpha / dim. */
  scale?: number;
}

/** Xavier/Glorot normal values for a [fanOut, fanIn] weight. */
function xavierNormal(fanOut: number, fanIn: number, rng: Rng): Float64Array {
  const std = Math.sqrt(2 / (fanIn + fanOut));
  return new Float64Array(fanOut * fanIn).map(() => rng.normal() * std);
}

/** Kaiming-uniform with a = √5 (PyTorch's Linear default): U(±1/√fanIn). */
function kaimingUniform(fanOut: number, fanIn: number, rng: Rng): Float64Array {
  const bound = 1 / Math.sqrt(fanIn);
  return new Float64Array(fanOut * fanIn).map(() => (rng.uniform() * 2 - 1) * bound);
}

// The adapter's fields (lora_A, lora_B, dim, ..., merged) come from LORA_FIELDS through this interface,
// which TypeScript merges into the class below.
/** A Linear layer with a LoRA adapter; its adapter fields are declared once, in {@link LORA_FIELDS}. */
export interface LinearLoRA extends LoraAdapter, LoraLayerState {}

/** A Linear layer with a LoRA adapter. */
export class LinearLoRA extends Linear {
  /** Wraps `linear` in a new LoRA layer sharing its weight and bias tensors (no copy). */
  constructor(linear: Linear, opts: LinearLoRAOptions = {}) {
    if (!(linear instanceof Linear)) throw new ConfigError(`LinearLoRA: expected a Linear, got ${linear}`);
    super(linear.inFeatures, linear.outFeatures, {
      bias: linear.bias !== null,
      materialize: false,
      device: linear.weight.device,
      dtype: linear.weight.dtype,
    });
    this.weight = linear.weight;
    this.bias = linear.bias;
    this.quantization = linear.quantization;
    this._quantLayout = linear._quantLayout;
    installAdapter(this, buildAdapter(linear, opts, "LinearLoRA"));
  }

  /** base(x) + dropout-placement(scale · B(A(x))). */
  override forward(x: Tensor): Tensor {
    if (this.merged) return linear(x, this.weight, this.bias);
    const routing = layerRouting(this);
    if (routing?.kind === "base") return super.forward(x);
    if (routing?.kind === "rows") return rowRoutedForward(this, x, routing.rows);
    const p = this.training ? this.dropoutP : 0;
    const seed = p > 0 ? (this.dropoutSeed ?? nextSeed()) : 0;
    const A = this.lora_A.weight, B = this.lora_B.weight;
    const drop = p > 0 ? { p, seed, position: this.dropoutPosition } : null;
    if (this._quantLayout !== null) {
      // A quantized base (QLoRA) keeps its own forward: the fused op dequantizes W inside the GEMMs.
      if (this.useFused && A.dtype === x.dtype && B.dtype === x.dtype) {
        const lora = { a: A, b: B, scale: this.scale, dropout: drop };
        return quantizedLinear(
          x,
          this.weight,
          this._quantLayout,
          this.outFeatures,
          this.inFeatures,
          this.bias,
          lora,
        );
      }
    } else if (this.useFused && x.dtype === this.weight.dtype && A.dtype === B.dtype) {
      return loraLinear(x, this.weight, this.bias, A, B, this.scale, drop);
    }
    const base = super.forward(x);
    let xl = A.dtype === x.dtype ? x : cast(x, A.dtype);
    if (this.dropoutPosition === "pre") xl = dropoutOp(xl, p, { seed, training: p > 0 });
    let lora = scaleOp(linear(linear(xl, A), B), this.scale);
    if (this.dropoutPosition === "post") lora = dropoutOp(lora, p, { seed, training: p > 0 });
    return add(base, lora.dtype === base.dtype ? lora : cast(lora, base.dtype));
  }

  /**
   * The base Linear's settings, then the adapter's (rank, alpha, scale, dropout, and `merged=True` once
   * merged); the `lora_A` / `lora_B` children print below, as PEFT's print shows them.
   */
  override extraRepr(): string {
    const adapter = `rank=${this.dim}, alpha=${this.alpha}, scale=${reprFloat(this.scale)}, ` +
      `dropout=${reprFloat(this.dropoutP)}`;
    return `${super.extraRepr()}, ${adapter}${this.merged ? ", merged=True" : ""}`;
  }

  /** Tells base-model savers that this layer carries parameters no base checkpoint has. */
  [ADAPTER_KIND](): string {
    return "LoRA";
  }

  /**
   * How a decoding step may run this layer (src/models/decode.ts): the base alone when merged, routed to
   * the base, or with every batch row routed to no adapter here; with rows routed to adapters, the base
   * plus each row's own term from the packed adapters ({@link routedDecodeParts}, the mixed-batch
   * forward's cache: dropout plays no part there either); base + scale · B(A(x)) otherwise. Null (its own
   * forward) with dropout active, or routed adapters the mixed-batch kernel cannot take.
   */
  [DECODE_PARTS](): DecodeParts | null {
    const routing = layerRouting(this);
    if (this.merged || routing?.kind === "base") return { lora: null };
    if (routing?.kind === "rows") {
      if (routing.rows.every((a) => a === null)) return { lora: null };
      const routed = routedDecodeParts(this, routing.rows);
      return routed === null ? null : { lora: null, routed };
    }
    if (this.training && this.dropoutP > 0) return null;
    return { lora: { a: this.lora_A.weight, b: this.lora_B.weight, scale: this.scale } };
  }

  /** {@link mergeLinearLoRA} on this layer. */
  merge(): Promise<void> {
    return mergeLinearLoRA(this);
  }

  /** {@link unmergeLinearLoRA} on this layer. */
  unmerge(): Promise<void> {
    return unmergeLinearLoRA(this);
  }
}

/** Whether `m` carries a LoRA adapter. */
export function isLoraLinear(m: unknown): m is LinearLoRA {
  return m instanceof LinearLoRA;
}

/** The Linear children of every LoRA layer of `model`: adapter internals, never targets themselves. */
export function adapterModules(model: Module): Set<Module> {
  const parts = new Set<Module>();
  for (const [, m] of model.namedModules()) {
    if (isLoraLinear(m)) { for (const c of adapterChildren(m)) parts.add(c); }
  }
  return parts;
}

// ---------------------------------------------------------------------------------------------------
// Building and installing an adapter
// ---------------------------------------------------------------------------------------------------

/**
 * Validates the options and makes the adapter for `base`, changing nothing on `base`: a bad option (or a
 * dtype the device lacks) must leave the caller's Linear as it was.
 */
function buildAdapter(
  base: Linear,
  options: LinearLoRAOptions,
  where: string,
  peftInit?: PeftInitLoraWeights,
): LoraAdapter {
  const opts = checkOptionKeys(options, LORA_OPTION_KEYS, where) as LinearLoRAOptions;
  const dim = opts.dim ?? 8;
  const alpha = opts.alpha ?? 32;
  const dropout = opts.dropout ?? 0;
  const dropoutPosition = opts.dropoutPosition ?? "post";
  const loraAInit = opts.loraAInitMethod ?? "xavier";
  validateLoraOptions(where, { dim, alpha, dropout, dropoutPosition, loraAInit }, "loraAInitMethod");
  checkOptionalBoolean(opts.useFused, "useFused", where);
  checkOptionalSeed(opts.seed, "seed", where);
  if (opts.scale !== undefined && !Number.isFinite(opts.scale)) {
    throw new ConfigError(`${where}: scale must be a finite number, got ${opts.scale}`);
  }
  const device = base.weight.device;
  const dtype = parseDType(opts.loraDtype, `${where}.loraDtype`) ?? base.weight.dtype;
  const rng = new Rng(opts.seed ?? nextSeed());
  const weights: Partial<Record<LoraWeightName, Linear>> = {};
  try {
    for (const field of LORA_WEIGHTS) {
      const [rows, cols] = field.shape(base, dim);
      const child = new Linear(cols, rows, { bias: false, materialize: false, device, dtype });
      const values = peftInit === undefined
        ? (field.init === "zeros"
          ? null
          : loraAInit === "xavier"
          ? xavierNormal(rows, cols, rng)
          : kaimingUniform(rows, cols, rng))
        : peftInitValues(peftInit, field.init, rows, cols, dim, rng);
      child.weight = values === null
        ? zeros([rows, cols], { device, dtype, requiresGrad: true })
        : tensor(values, [rows, cols], { device, dtype, requiresGrad: true });
      weights[field.name] = child;
    }
  } catch (e) {
    for (const child of Object.values(weights)) child.weight.dispose();
    throw e;
  }
  const adapter: LoraAdapter = {
    ...(weights as Record<LoraWeightName, Linear>),
    dim,
    alpha,
    scale: opts.scale ?? alpha / dim,
    dropoutP: dropout,
    dropoutPosition,
    useFused: opts.useFused ?? true,
  };
  return adapter;
}

/**
 * PEFT's `init_lora_weights`: true (A kaiming-uniform with a = √5, B zero), false (both as torch's
 * nn.Linear default, so the adapter starts non-zero) or "gaussian" (A normal with std 1 / r, B zero).
 */
export type PeftInitLoraWeights = boolean | "gaussian";

/** The initial values of one adapter weight under PEFT's rule; null means zeros. */
function peftInitValues(
  init: PeftInitLoraWeights,
  fieldInit: "loraAInit" | "zeros",
  rows: number,
  cols: number,
  rank: number,
  rng: Rng,
): Float64Array | null {
  if (init === false) return kaimingUniform(rows, cols, rng);
  if (fieldInit === "zeros") return null;
  if (init === "gaussian") return new Float64Array(rows * cols).map(() => rng.normal() / rank);
  return kaimingUniform(rows, cols, rng);
}

/**
 * A new adapter for `base` (validated as {@link patchLinearModule} validates its options) without touching
 * `base`; with `peftInit`, its weights start as PEFT's `init_lora_weights` says instead of `loraAInitMethod`.
 */
export function newAdapter(
  base: Linear,
  opts: LinearLoRAOptions,
  where: string,
  peftInit?: PeftInitLoraWeights,
): LoraAdapter {
  return buildAdapter(base, opts, where, peftInit);
}

/** The adapter a LoRA layer carries now, as a record (the same weight children, no copy). */
export function currentAdapter(layer: LinearLoRA): LoraAdapter {
  const own = layer as unknown as Record<string, unknown>;
  return Object.fromEntries(LORA_ADAPTER_KEYS.map((k) => [k, own[k]])) as unknown as LoraAdapter;
}

/**
 * Takes the adapter off `layer` without freeing anything and returns it; `layer` becomes a plain Linear
 * again (same object, same base tensors). A merged adapter must be unmerged first.
 */
export function detachAdapter(layer: LinearLoRA): LoraAdapter {
  if (layer.merged) {
    throw new ConfigError(`detachAdapter: the adapter is merged into the base weight; unmerge it first`);
  }
  const adapter = currentAdapter(layer);
  const own = layer as unknown as Record<string, unknown>;
  for (const key of LORA_FIELD_NAMES) delete own[key];
  Object.setPrototypeOf(layer, Linear.prototype);
  return adapter;
}

/** Puts `adapter` (made for a Linear of this size) on the plain Linear `linear`, in place. */
export function attachAdapter(linear: Linear, adapter: LoraAdapter): LinearLoRA {
  if (linear instanceof LinearLoRA) {
    throw new ConfigError(
      `attachAdapter: this Linear [${linear.outFeatures}, ${linear.inFeatures}] already has an adapter`,
    );
  }
  const training = linear.training;
  Object.setPrototypeOf(linear, LinearLoRA.prototype);
  installAdapter(linear as LinearLoRA, adapter);
  linear.training = training;
  return linear as LinearLoRA;
}

/**
 * The composed (unfused) forward of a batch whose rows use different adapters, or none: the base output
 * plus, for each adapter present, scale · B(A(x)) on its rows only. Rows are gathered per adapter (an
 * `embedding` lookup over the rows), so each adapter's two GEMMs run on its own rows, then the deltas are
 * gathered back into row order (rows without an adapter read a zero row). No dropout: PEFT allows mixed
 * batches in eval mode only. On WebGPU the same sum runs as the base GEMM plus one mixed-batch LoRA
 * dispatch instead (lora_rows.ts), with gradients too (two dispatches backward, whatever the number of
 * adapters); this composed form stays the reference.
 */
function rowRoutedForward(layer: LinearLoRA, x: Tensor, rows: readonly (LoraAdapter | null)[]): Tensor {
  const batch = rows.length;
  const inF = layer.inFeatures, outF = layer.outFeatures;
  const lead = x.size / inF;
  if (batch === 0 || lead % batch !== 0) {
    throw new ShapeError(
      `LinearLoRA.forward: input [${x.shape}] does not split into ${batch} batch rows (one adapter per row)`,
    );
  }
  const chunk = lead / batch;
  const groups = new Map<LoraAdapter, number[]>();
  rows.forEach((a, i) => {
    if (a === null) return;
    const g = groups.get(a);
    if (g) g.push(i);
    else groups.set(a, [i]);
  });
  // The base layer's own forward: a quantized base dequantizes inside its GEMMs.
  const base = Linear.prototype.forward.call(layer, x);
  if (groups.size === 0) return base;
  if (base.dtype === x.dtype && canFuseRows(layer, x, [...groups.keys()])) {
    return fusedRowRoutedForward(layer, x, base, rows, chunk);
  }
  const flatX = reshape(x, [batch, chunk * inF]);
  const pieces: Tensor[] = [];
  const index = new Array<number>(batch).fill(-1);
  let offset = 0;
  for (const [adapter, idx] of groups) {
    const A = adapter.lora_A.weight, B = adapter.lora_B.weight;
    let xs = reshape(embedding([idx], flatX), [idx.length * chunk, inF]);
    if (xs.dtype !== A.dtype) xs = cast(xs, A.dtype);
    let d = scaleOp(linear(linear(xs, A), B), adapter.scale);
    if (d.dtype !== base.dtype) d = cast(d, base.dtype);
    pieces.push(reshape(d, [idx.length, chunk * outF]));
    idx.forEach((r, j) => index[r] = offset + j);
    offset += idx.length;
  }
  pieces.push(zeros([1, chunk * outF], { device: base.device, dtype: base.dtype }));
  const table = concat(pieces, 0);
  const delta = reshape(embedding([index.map((i) => (i < 0 ? offset : i))], table), base.shape);
  return add(base, delta);
}

/** Freezes the base weights and adds the adapter's fields and fresh layer state to `layer`. */
function installAdapter(layer: LinearLoRA, adapter: LoraAdapter): void {
  layer.weight.requiresGrad = false;
  if (layer.bias) layer.bias.requiresGrad = false;
  const own = layer as unknown as Record<string, unknown>;
  for (const key of LORA_ADAPTER_KEYS) own[key] = adapter[key];
  for (const [key, initial] of LORA_LAYER_STATE) own[key] = initial;
  layer.training = (layer as { training?: boolean }).training ?? true;
}

// ---------------------------------------------------------------------------------------------------
// Lifecycle: patch ↔ unpatch, merge ↔ unmerge
// ---------------------------------------------------------------------------------------------------

/**
 * Turns an existing Linear into a LoRA linear in place and returns the same object; works on a Linear
 * whose weights are not materialised yet (load them afterwards with loadStateDict).
 */
export function patchLinearModule(linear: Linear, opts: LinearLoRAOptions = {}): LinearLoRA {
  if (!(linear instanceof Linear)) {
    throw new ConfigError(
      `patchLinearModule: expected a Linear, got ${(linear as object)?.constructor?.name ?? linear}`,
    );
  }
  if (linear instanceof LinearLoRA) {
    throw new ConfigError(
      `patchLinearModule: this Linear [${linear.outFeatures}, ${linear.inFeatures}] already has a LoRA adapter`,
    );
  }
  const adapter = buildAdapter(linear, opts, "patchLinearModule");
  Object.setPrototypeOf(linear, LinearLoRA.prototype);
  installAdapter(linear as LinearLoRA, adapter);
  return linear as LinearLoRA;
}

/**
 * Undoes {@link patchLinearModule} in place: frees the adapter's weights, removes every adapter field and
 * returns the same object as a plain Linear. A merged adapter stays folded into the base weight (that is
 * mergeAndUnload); an unmerged one is dropped. The base weights keep their `requiresGrad`.
 */
export function unpatchLinearModule(layer: LinearLoRA): Linear {
  if (!isLoraLinear(layer)) {
    throw new ConfigError(
      `unpatchLinearModule: expected a LoRA layer, got ${(layer as object)?.constructor?.name ?? layer}`,
    );
  }
  for (const [, t] of adapterWeights(layer)) t.dispose();
  const own = layer as unknown as Record<string, unknown>;
  for (const key of LORA_FIELD_NAMES) delete own[key];
  Object.setPrototypeOf(layer, Linear.prototype);
  return layer as Linear;
}

/**
 * Throws a FormatError when an adapter weight of `layer` holds NaN or Inf (PEFT's safe_merge), naming
 * `where`, the module path, the weight and its shape: a diverged adapter must not be folded into the base.
 */
export async function checkAdapterFinite(layer: LinearLoRA, where: string, modulePath = ""): Promise<void> {
  for (const [field, t] of adapterWeights(layer)) {
    if (!(await t.data()).every(Number.isFinite)) {
      throw new FormatError(
        `${where}: ${modulePath === "" ? "" : `${modulePath}.`}${field.name} weight [${t.shape}] holds NaN ` +
          `or Inf; refusing to merge (no weight was changed)`,
      );
    }
  }
}

/**
 * Folds the adapter into the base weight: W ← W + scale · B A. Refuses non-finite adapter weights with a
 * FormatError (PEFT's safe_merge) so a diverged adapter cannot corrupt the base. No-op when merged.
 * On a quantized base (quantizeLinear) the adapter is merged into the dequantized weight, which becomes a
 * dense f32 weight and stays one (unmerge subtracts from it): merging never re-quantizes.
 */
export async function mergeLinearLoRA(layer: LinearLoRA): Promise<void> {
  if (layer.merged) return;
  await checkAdapterFinite(layer, "merge");
  // A quantized base is merged into its dequantized f32 weight, which it keeps: never re-quantized.
  if (layer._quantLayout !== null) dequantizeLinear(layer);
  noGrad(() => layer.weight._assign(add(layer.weight, loraDelta(layer))));
  layer.merged = true;
}

/** Undoes {@link mergeLinearLoRA}: W ← W − scale · B A. No-op when not merged. */
export function unmergeLinearLoRA(layer: LinearLoRA): Promise<void> {
  if (!layer.merged) return Promise.resolve();
  noGrad(() => layer.weight._assign(sub(layer.weight, loraDelta(layer))));
  layer.merged = false;
  return Promise.resolve();
}

// A module function rather than a private method: patched layers never ran LinearLoRA's constructor,
// so they lack its private brand.
/** scale · B A as a [out, in] tensor in the base weight's dtype. */
function loraDelta(l: LinearLoRA): Tensor {
  const d = scaleOp(matmul(l.lora_B.weight, l.lora_A.weight), l.scale);
  return d.dtype === l.weight.dtype ? d : cast(d, l.weight.dtype);
}
