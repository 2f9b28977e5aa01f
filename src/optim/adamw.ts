/**
 * AdamW with torch.optim.AdamW's arithmetic, op for op: decoupled weight decay p ← p·(1 − lr·wd), moment
 * updates by lerp and addcmul, bias corrections in double precision, denom = √v / √(1 − β₂ᵗ) + eps and
 * p ← p − (lr / (1 − β₁ᵗ)) · m / denom. Every update is a tensor op on the parameter's device, and the
 * result replaces the parameter's storage in place, so layers and other holders keep seeing it.
 * Scalars enter as tensor operands and so are rounded to the parameter dtype, as torch does.
 * @module
 */
import { add, div, keep, mul, noGrad, sqrt, sub, Tensor, tidy, zeros } from "../tensor/mod.ts";
import { Module } from "../nn/module.ts";
import { ConfigError, ShapeError } from "../core/errors.ts";
import { checkOptionKeys, showValue } from "../core/options.ts";

/** Names of {@link AdamWOptions}. */
const ADAMW_OPTION_KEYS = ["lr", "betas", "eps", "weightDecay"] as const;

/** Options of {@link AdamW}. */
export interface AdamWOptions {
  /** Learning rate (default 1e-3, torch.optim.AdamW's default). */
  lr?: number;
  /** (β₁, β₂), default [0.9, 0.999]. */
  betas?: [number, number];
  /** Added to the denominator (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay (default 0.01, torch's AdamW default). */
  weightDecay?: number;
}

/** One parameter's optimizer state. */
export interface AdamWParamState {
  /** Steps taken for this parameter (parameters without a gradient skip a step, as in torch). */
  step: number;
  /** First moment (torch's `exp_avg`). */
  expAvg: Tensor;
  /** Second moment (torch's `exp_avg_sq`). */
  expAvgSq: Tensor;
}

/** {@link AdamW.stateDict}'s form: torch's layout (state by parameter index, hyperparameters). */
export interface AdamWStateDict {
  /** Per parameter index: step count and moments. */
  state: Record<number, { step: number; exp_avg: Tensor; exp_avg_sq: Tensor }>;
  /** One group: hyperparameters and parameter indices. */
  param_groups: {
    lr: number;
    betas: [number, number];
    eps: number;
    weight_decay: number;
    params: number[];
  }[];
}

function checkHyper(o: { lr: number; betas: [number, number]; eps: number; weightDecay: number }): void {
  if (typeof o.lr !== "number" || !(o.lr >= 0) || !Number.isFinite(o.lr)) {
    throw new ConfigError(`AdamW: lr must be a non-negative number, got ${o.lr}`);
  }
  if (
    !Array.isArray(o.betas) || o.betas.length !== 2 ||
    o.betas.some((b) => typeof b !== "number" || !(b >= 0 && b < 1))
  ) {
    throw new ConfigError(`AdamW: betas must be two numbers in [0, 1), got ${JSON.stringify(o.betas)}`);
  }
  // Infinite eps or weight decay would turn every update into 0 or −∞ without an error.
  if (typeof o.eps !== "number" || !(o.eps >= 0) || !Number.isFinite(o.eps)) {
    throw new ConfigError(`AdamW: eps must be a finite non-negative number, got ${showValue(o.eps)}`);
  }
  if (typeof o.weightDecay !== "number" || !(o.weightDecay >= 0) || !Number.isFinite(o.weightDecay)) {
    throw new ConfigError(
      `AdamW: weightDecay must be a finite non-negative number, got ${showValue(o.weightDecay)}`,
    );
  }
}

/** Adam with decoupled weight decay (torch.optim.AdamW semantics). */
export class AdamW {
  /** The parameters updated, in order (indices of the state dict). */
  readonly params: readonly Tensor[];
  /** Learning rate; schedulers change it between steps. */
  lr: number;
  /** (β₁, β₂). */
  betas: [number, number];
  /** Added to the denominator. */
  eps: number;
  /** Decoupled weight decay. */
  weightDecay: number;
  /** Per parameter: moments and step count, null before its first update. */
  readonly state: (AdamWParamState | null)[];

  /** An optimizer over `params` (each once). */
  constructor(params: Iterable<Tensor>, options: AdamWOptions = {}) {
    if (typeof (params as Iterable<Tensor> | null)?.[Symbol.iterator] !== "function") {
      throw new ConfigError(`AdamW: params must be a list of tensors, got ${showValue(params)}`);
    }
    this.params = [...params];
    if (this.params.length === 0) throw new ConfigError(`AdamW: got an empty parameter list`);
    const notTensor = this.params.findIndex((p) => !(p instanceof Tensor));
    if (notTensor >= 0) {
      throw new ConfigError(
        `AdamW: params[${notTensor}] is not a Tensor (got ${showValue(this.params[notTensor])})`,
      );
    }
    const opts = checkOptionKeys(options, ADAMW_OPTION_KEYS, "AdamW") as Partial<AdamWOptions>;
    if (new Set(this.params).size !== this.params.length) {
      throw new ConfigError(`AdamW: a parameter appears more than once in the list`);
    }
    this.lr = opts.lr === undefined ? 1e-3 : opts.lr; // null stays an error (checkHyper)
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    checkHyper(this);
    this.state = this.params.map(() => null);
  }

  /** Applies one update to every parameter that has a gradient (synchronous: no read-back). */
  step(): void {
    checkHyper(this);
    const [beta1, beta2] = this.betas;
    const { lr, eps, weightDecay } = this;
    // tidy frees every temporary of the update; the state buffers are kept.
    tidy(() =>
      noGrad(() => {
        this.params.forEach((p, i) => {
          const g = p.grad;
          if (g === null) return;
          if (g.shape.join() !== p.shape.join()) {
            throw new ShapeError(
              `AdamW.step: gradient [${g.shape}] of parameter ${i} does not match [${p.shape}]`,
            );
          }
          const s = this.state[i] ??= {
            step: 0,
            expAvg: keep(zeros(p.shape, { device: p.device, dtype: p.dtype })),
            expAvgSq: keep(zeros(p.shape, { device: p.device, dtype: p.dtype })),
          };
          s.step += 1;
          const decayed = weightDecay === 0 ? p : mul(p, 1 - lr * weightDecay);
          // torch: exp_avg.lerp_(grad, 1 − β₁), i.e. m + w·(g − m) for w < 0.5.
          s.expAvg._assign(add(s.expAvg, mul(sub(g, s.expAvg), 1 - beta1)));
          // torch: exp_avg_sq.mul_(β₂).addcmul_(grad, grad, value=1 − β₂), evaluated (value·g)·g.
          s.expAvgSq._assign(add(mul(s.expAvgSq, beta2), mul(mul(g, 1 - beta2), g)));
          const bias1 = 1 - beta1 ** s.step;
          const bias2Sqrt = Math.sqrt(1 - beta2 ** s.step);
          const denom = add(div(sqrt(s.expAvgSq), bias2Sqrt), eps);
          // torch: param.addcdiv_(exp_avg, denom, value=−lr / bias1), evaluated (value·m) / denom.
          p._assign(add(decayed, div(mul(s.expAvg, -lr / bias1), denom)));
        });
      })
    );
  }

  /** Clears every parameter's gradient (set to null, torch's default), freeing its memory. */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** The state in torch's layout; tensors are the live moment buffers (copy before mutating). */
  stateDict(): AdamWStateDict {
    const state: AdamWStateDict["state"] = {};
    this.state.forEach((s, i) => {
      if (s !== null) state[i] = { step: s.step, exp_avg: s.expAvg, exp_avg_sq: s.expAvgSq };
    });
    return {
      state,
      param_groups: [{
        lr: this.lr,
        betas: [...this.betas],
        eps: this.eps,
        weight_decay: this.weightDecay,
        params: this.params.map((_, i) => i),
      }],
    };
  }

  /**
   * Restores state saved by {@link stateDict} (values are copied onto each parameter's device and dtype).
   * Moment entries may be tensors or `{ shape, data }` host arrays.
   */
  loadStateDict(sd: {
    state: Record<number | string, { step: number; exp_avg: StateTensor; exp_avg_sq: StateTensor }>;
    param_groups: {
      lr: number;
      betas: [number, number];
      eps: number;
      weight_decay: number;
      params?: number[];
    }[];
  }): void {
    if (!sd || typeof sd !== "object" || !Array.isArray(sd.param_groups) || sd.param_groups.length !== 1) {
      throw new ConfigError(`AdamW.loadStateDict: expected { state, param_groups: [one group] }`);
    }
    const group = sd.param_groups[0];
    if (group.params !== undefined && group.params.length !== this.params.length) {
      throw new ConfigError(
        `AdamW.loadStateDict: the saved group has ${group.params.length} parameters, this optimizer ${this.params.length}`,
      );
    }
    const next = {
      lr: group.lr,
      betas: [...group.betas] as [number, number],
      eps: group.eps,
      weightDecay: group.weight_decay,
    };
    checkHyper(next);
    const restored: (AdamWParamState | null)[] = this.params.map(() => null);
    for (const [key, s] of Object.entries(sd.state ?? {})) {
      const i = Number(key);
      if (!Number.isInteger(i) || i < 0 || i >= this.params.length) {
        throw new ConfigError(
          `AdamW.loadStateDict: state for parameter ${key}, but there are ${this.params.length}`,
        );
      }
      const p = this.params[i];
      if (!Number.isInteger(s.step) || s.step < 1) {
        throw new ConfigError(
          `AdamW.loadStateDict: parameter ${i} has step ${s.step}, not a positive integer`,
        );
      }
      restored[i] = {
        step: s.step,
        expAvg: copyLike(s.exp_avg, p, i, "exp_avg"),
        expAvgSq: copyLike(s.exp_avg_sq, p, i, "exp_avg_sq"),
      };
    }
    Object.assign(this, next);
    restored.forEach((s, i) => {
      this.state[i]?.expAvg.dispose();
      this.state[i]?.expAvgSq.dispose();
      this.state[i] = s;
    });
  }
}

/** A moment buffer as loadStateDict takes it. */
export type StateTensor = Tensor | { shape: readonly number[]; data: ArrayLike<number> };

/** A fresh tensor on p's device and dtype holding `src` (Module.loadStateDict does the conversions). */
function copyLike(src: StateTensor, p: Tensor, i: number, what: string): Tensor {
  if (src.shape.length !== p.shape.length || src.shape.some((d, j) => d !== p.shape[j])) {
    throw new ShapeError(
      `AdamW.loadStateDict: ${what} of parameter ${i} has shape [${src.shape}], the parameter [${p.shape}]`,
    );
  }
  const holder = Object.assign(new Module(), {
    value: keep(zeros(p.shape, { device: p.device, dtype: p.dtype })),
  });
  holder.loadStateDict({ value: src });
  return holder.value;
}
