/**
 * `LinearLoRA`: a Linear plus a low-rank update, y = x Wᵀ + b + scale · drop(B(A(x))). It keeps the
 * wrapped layer's weight and bias at the same names (checkpoints keep their structure) and freezes
 * them; `lora_A` [dim, in] and `lora_B` [out, dim] are `Linear` children, B zero-initialised.
 * @module
 */
import { Linear } from "../nn/layers.ts";
import { type Tensor, tensor, zeros } from "../tensor/tensor.ts";
import { add, cast, dropout as dropoutOp, linear, matmul, scale as scaleOp, sub } from "../tensor/ops.ts";
import { noGrad } from "../tensor/graph.ts";
import type { DType } from "../core/dtype.ts";
import { nextSeed, Rng } from "../core/random.ts";
import { loraLinear } from "./lora_function.ts";
import { type DropoutPosition, type LoraAInit, parseDType, validateLoraOptions } from "./nemo_config.ts";
import { ConfigError, DeviceError } from "../core/errors.ts";
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

/** A Linear layer with a LoRA adapter. */
export class LinearLoRA extends Linear {
  declare lora_A: Linear;
  declare lora_B: Linear;
  /** Rank r. */
  declare dim: number;
  declare alpha: number;
  /** Multiplier of the LoRA branch (alpha / dim unless overridden). */
  declare scale: number;
  declare dropoutP: number;
  declare dropoutPosition: DropoutPosition;
  declare useFused: boolean;
  /** Fixes the dropout mask seed (tests, reproducibility); null draws a fresh seed per forward. */
  declare dropoutSeed: number | null;
  /** Whether the adapter is folded into the base weight (see {@link merge}). */
  declare merged: boolean;

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
    installAdapter(this, buildAdapter(linear, opts, "LinearLoRA"));
  }

  /** base(x) + dropout-placement(scale · B(A(x))). */
  override forward(x: Tensor): Tensor {
    if (this.merged) return linear(x, this.weight, this.bias);
    const p = this.training ? this.dropoutP : 0;
    const seed = p > 0 ? (this.dropoutSeed ?? nextSeed()) : 0;
    const A = this.lora_A.weight, B = this.lora_B.weight;
    if (this.useFused && A.dtype === this.weight.dtype && x.dtype === this.weight.dtype) {
      const drop = p > 0 ? { p, seed, position: this.dropoutPosition } : null;
      return loraLinear(x, this.weight, this.bias, A, B, this.scale, drop);
    }
    const base = linear(x, this.weight, this.bias);
    let xl = A.dtype === x.dtype ? x : cast(x, A.dtype);
    if (this.dropoutPosition === "pre") xl = dropoutOp(xl, p, { seed, training: p > 0 });
    let lora = scaleOp(linear(linear(xl, A), B), this.scale);
    if (this.dropoutPosition === "post") lora = dropoutOp(lora, p, { seed, training: p > 0 });
    return add(base, lora.dtype === base.dtype ? lora : cast(lora, base.dtype));
  }

  /**
   * Folds the adapter into the base weight: W ← W + scale · B A. Refuses non-finite adapter weights
   * (PEFT's safe_merge) so a diverged adapter cannot corrupt the base. No-op when already merged.
   */
  async merge(): Promise<void> {
    if (this.merged) return;
    for (const [name, t] of [["lora_A", this.lora_A.weight], ["lora_B", this.lora_B.weight]] as const) {
      const v = await t.data();
      if (!v.every(Number.isFinite)) {
        throw new DeviceError(`merge: ${name} weight [${t.shape}] holds NaN or Inf; refusing to merge`);
      }
    }
    noGrad(() => {
      const merged = add(this.weight, loraDelta(this));
      this.weight._assign(merged);
    });
    this.merged = true;
  }

  /** Undoes {@link merge}: W ← W − scale · B A. No-op when not merged. */
  unmerge(): Promise<void> {
    if (!this.merged) return Promise.resolve();
    noGrad(() => {
      const restored = sub(this.weight, loraDelta(this));
      this.weight._assign(restored);
    });
    this.merged = false;
    return Promise.resolve();
  }
}

// A module function rather than a private method: patched layers never ran LinearLoRA's constructor,
// so they lack its private brand.
/** scale · B A as a [out, in] tensor in the base weight's dtype. */
function loraDelta(l: LinearLoRA): Tensor {
  const d = scaleOp(matmul(l.lora_B.weight, l.lora_A.weight), l.scale);
  return d.dtype === l.weight.dtype ? d : cast(d, l.weight.dtype);
}

/** What an adapter adds to a Linear, built in full before the Linear is touched. */
interface AdapterFields {
  lora_A: Linear;
  lora_B: Linear;
  dim: number;
  alpha: number;
  scale: number;
  dropoutP: number;
  dropoutPosition: DropoutPosition;
  useFused: boolean;
}

/**
 * Validates the options and makes the adapter's layers for `base`, changing nothing on `base`: a bad
 * option (or a dtype the device lacks) must leave the caller's Linear as it was.
 */
function buildAdapter(base: Linear, options: LinearLoRAOptions, where: string): AdapterFields {
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
  const aValues = loraAInit === "xavier"
    ? xavierNormal(dim, base.inFeatures, rng)
    : kaimingUniform(dim, base.inFeatures, rng);
  const loraA = new Linear(base.inFeatures, dim, { bias: false, materialize: false, device, dtype });
  loraA.weight = tensor(aValues, [dim, base.inFeatures], { device, dtype, requiresGrad: true });
  const loraB = new Linear(dim, base.outFeatures, { bias: false, materialize: false, device, dtype });
  try {
    loraB.weight = zeros([base.outFeatures, dim], { device, dtype, requiresGrad: true });
  } catch (e) {
    loraA.weight.dispose();
    throw e;
  }
  return {
    lora_A: loraA,
    lora_B: loraB,
    dim,
    alpha,
    scale: opts.scale ?? alpha / dim,
    dropoutP: dropout,
    dropoutPosition,
    useFused: opts.useFused ?? true,
  };
}

/** Freezes the base weights and adds the adapter fields (to a new LinearLoRA, or one patched in place). */
function installAdapter(obj: LinearLoRA, fields: AdapterFields): void {
  obj.weight.requiresGrad = false;
  if (obj.bias) obj.bias.requiresGrad = false;
  obj.lora_A = fields.lora_A;
  obj.lora_B = fields.lora_B;
  obj.dim = fields.dim;
  obj.alpha = fields.alpha;
  obj.scale = fields.scale;
  obj.dropoutP = fields.dropoutP;
  obj.dropoutPosition = fields.dropoutPosition;
  obj.useFused = fields.useFused;
  obj.dropoutSeed = null;
  obj.merged = false;
  obj.training = (obj as { training?: boolean }).training ?? true;
}

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
  const fields = buildAdapter(linear, opts, "patchLinearModule");
  Object.setPrototypeOf(linear, LinearLoRA.prototype);
  installAdapter(linear as LinearLoRA, fields);
  return linear as LinearLoRA;
}

/** Whether `m` carries a LoRA adapter. */
export function isLoraLinear(m: unknown): m is LinearLoRA {
  return m instanceof LinearLoRA;
}
