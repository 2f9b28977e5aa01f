/**
 * Basic layers: Linear, Embedding, RMSNorm, Dropout.
 * @module
 */
import { Module, reprFloat } from "./module.ts";
import {
  dropout,
  embedding,
  type IndexInput,
  linear,
  ones,
  rmsNorm,
  Tensor,
  tensor,
  type TensorOptions,
} from "../tensor/mod.ts";
import { currentDevice, type Device } from "../backend/device.ts";
import type { DType } from "../core/dtype.ts";
import { nextSeed, Rng } from "../core/random.ts";
import { ConfigError, DeviceError } from "../core/errors.ts";
import { dequantizePacked, quantizedLinear, type QuantLayout, type QuantScheme } from "./quantized_linear.ts";

/** How a {@link Linear}'s frozen weight is quantized (quantizeLinear in src/nn/quantize.ts). */
export interface LinearQuantization {
  readonly scheme: QuantScheme;
  /** NF4: elements per absmax; int8: in_features (one scale per output row). */
  readonly blockSize: number;
}

/** Options of {@link Linear}. */
export interface LinearOptions {
  bias?: boolean;
  device?: Device;
  dtype?: DType;
  /** Seed of the default (PyTorch-style kaiming-uniform) init. */
  seed?: number;
  /**
   * false: create shape-only weights (PyTorch's meta device) to be loaded later with loadStateDict;
   * the layer can be LoRA-patched before that.
   */
  materialize?: boolean;
}

function checkFeatures(op: string, ...dims: number[]): void {
  for (const d of dims) {
    if (!Number.isInteger(d) || d < 1) {
      throw new ConfigError(`${op}: feature sizes must be positive integers, got ${dims}`);
    }
  }
}

/** Uniform(−bound, bound) values. */
export function uniformValues(n: number, bound: number, seed: number): Float64Array {
  const rng = new Rng(seed);
  const v = new Float64Array(n);
  for (let i = 0; i < n; i++) v[i] = (rng.uniform() * 2 - 1) * bound;
  return v;
}

/** y = x Wᵀ + b; weight [out, in], bias [out]. Initialised like PyTorch: U(±1/√in). */
export class Linear extends Module {
  weight: Tensor;
  bias: Tensor | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /**
   * null, or how the weight is quantized: then `weight` is the frozen packed words ([words], f32; see
   * src/backend/kernels/quantize.ts) and {@link dequantizedWeight} gives the values.
   */
  quantization: LinearQuantization | null = null;
  /** @internal the packed layout of a quantized weight. */
  _quantLayout: QuantLayout | null = null;

  constructor(inFeatures: number, outFeatures: number, opts: LinearOptions = {}) {
    super();
    checkFeatures("Linear", inFeatures, outFeatures);
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    const device = opts.device ?? currentDevice();
    const dtype = opts.dtype ?? "f32";
    const t: TensorOptions = { device, dtype, requiresGrad: true };
    const bound = 1 / Math.sqrt(inFeatures);
    const seed = opts.seed ?? nextSeed();
    const make = (shape: number[], s: number) => {
      if (opts.materialize === false) return Tensor._meta(shape, dtype, device).requiresGrad_(true);
      const n = shape[0] * (shape[1] ?? 1);
      // The initial values are drawn on the host first: check the budget before that allocation, so an
      // oversized layer is a DeviceError rather than the runtime's RangeError or a killed process.
      const limit = device.memoryLimit, live = device.memory().bytes, bytes = n * 4;
      if ((limit !== null && live + bytes > limit) || n > 2 ** 31 - 1) {
        throw new DeviceError(
          `Linear(${inFeatures}, ${outFeatures}): the ${shape.length === 2 ? "weight" : "bias"} [${shape}] ` +
            `(${dtype}) needs ${bytes} bytes with ${live} bytes live, past ` +
            (limit !== null && live + bytes > limit
              ? `this device's memory limit of ${limit} bytes (setMemoryLimit)`
              : `the largest array this runtime allocates`),
        );
      }
      return tensor(uniformValues(n, bound, s), shape, t);
    };
    this.weight = make([outFeatures, inFeatures], seed);
    this.bias = opts.bias === false ? null : make([outFeatures], seed + 1);
  }

  /** `in_features=64, out_features=32, bias=True`, as PyTorch prints a Linear. */
  override extraRepr(): string {
    return `in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${
      this.bias === null ? "False" : "True"
    }`;
  }

  override forward(x: Tensor): Tensor {
    if (this._quantLayout !== null) {
      return quantizedLinear(x, this.weight, this._quantLayout, this.outFeatures, this.inFeatures, this.bias);
    }
    return linear(x, this.weight, this.bias);
  }

  /**
   * The weight's values [out, in]: dequantized into a new f32 tensor (or `dtype`) when quantized, else the
   * weight itself.
   */
  dequantizedWeight(dtype: DType = "f32"): Tensor {
    if (this._quantLayout === null) return this.weight;
    return dequantizePacked(this.weight, this._quantLayout, [this.outFeatures, this.inFeatures], dtype);
  }
}

/**
 * A lookup table [num, dim]; forward takes integer ids. Initialised N(0, 1) like PyTorch, or left
 * shape-only with `materialize: false` (like {@link Linear}) for loadStateDict to fill.
 */
export class Embedding extends Module {
  weight: Tensor;

  constructor(
    numEmbeddings: number,
    embeddingDim: number,
    opts: { device?: Device; dtype?: DType; seed?: number; materialize?: boolean } = {},
  ) {
    super();
    checkFeatures("Embedding", numEmbeddings, embeddingDim);
    if (opts.materialize === false) {
      // Checkpoint loaders fill the table right away; drawing a vocabulary-sized init first is wasted time.
      const device = opts.device ?? currentDevice();
      const shape = [numEmbeddings, embeddingDim];
      this.weight = Tensor._meta(shape, opts.dtype ?? "f32", device).requiresGrad_(true);
      return;
    }
    const rng = new Rng(opts.seed ?? nextSeed());
    const v = new Float64Array(numEmbeddings * embeddingDim).map(() => rng.normal());
    this.weight = tensor(v, [numEmbeddings, embeddingDim], { ...opts, requiresGrad: true });
  }

  override forward(ids: IndexInput | Tensor): Tensor {
    return embedding(ids, this.weight);
  }

  /** `256, 64` (rows, width), as PyTorch prints an Embedding. */
  override extraRepr(): string {
    return `${this.weight.shape[0]}, ${this.weight.shape[1]}`;
  }
}

/** Root-mean-square normalisation over the last axis with a learned scale (ones at init). */
export class RMSNorm extends Module {
  weight: Tensor;
  readonly eps: number;

  constructor(dim: number, opts: { eps?: number; device?: Device; dtype?: DType } = {}) {
    super();
    checkFeatures("RMSNorm", dim);
    this.eps = opts.eps ?? 1e-6;
    this.weight = ones([dim], { device: opts.device, dtype: opts.dtype, requiresGrad: true });
  }

  override forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }

  /** `(64,), eps=1e-06`, as PyTorch prints an RMSNorm. */
  override extraRepr(): string {
    return `(${this.weight.shape[0]},), eps=${reprFloat(this.eps)}`;
  }
}

/** Inverted dropout, active in training mode only. */
export class Dropout extends Module {
  readonly p: number;

  constructor(p = 0.5) {
    super();
    if (typeof p !== "number" || !(p >= 0 && p < 1)) {
      throw new ConfigError(`Dropout: p must be in [0, 1), got ${p}`);
    }
    this.p = p;
  }

  /** `seed` fixes the mask (for tests); otherwise each call draws a fresh one. */
  override forward(x: Tensor, seed?: number): Tensor {
    return dropout(x, this.p, { training: this.training, seed });
  }

  /** `p=0.1, inplace=False`, as PyTorch prints a Dropout (never in place here). */
  override extraRepr(): string {
    return `p=${reprFloat(this.p)}, inplace=False`;
  }
}
