/**
 * AdamW with torch.optim.AdamW's arithmetic, op for op: decoupled weight decay p ← p·(1 − lr·wd), moment
 * updates by lerp and addcmul, bias corrections in double precision, denom = √v / √(1 − β₂ᵗ) + eps and
 * p ← p − (lr / (1 − β₁ᵗ)) · m / denom, every op rounded to f32 as torch's f32 tensor ops are.
 *
 * Multi-tensor: the parameters of one device and dtype form a group whose moments live in two packed
 * arrays (f32; f64 for f64 parameters on the CPU), one segment per parameter. A step packs the group's
 * parameters and gradients into one array each (buffer copies on WebGPU, no kernels), runs one `adamw`
 * kernel over every segment (src/backend/kernels/adamw.ts) and copies the new values back into each
 * parameter's own storage, so layers and other holders keep seeing it. Nothing is read back.
 *
 * f16 parameters keep f32 moments and are updated in f32 with one rounding to f16 at the end: computed in
 * f16, eps = 1e-8 underflows to 0 and the first step divides 0 by 0.
 * @module
 */
import { fromStorage, keep, Tensor, zeros } from "../tensor/mod.ts";
import { Module } from "../nn/module.ts";
import type { Device } from "../backend/device.ts";
import type { Storage } from "../backend/backend.ts";
import type { DType } from "../core/dtype.ts";
import { ADAMW, type AdamWSegment, adamwStateDType } from "../backend/kernels/adamw.ts";
import { packAlignment } from "../backend/packing.ts";
import { ConfigError, DeviceError, DTypeError, ShapeError } from "../core/errors.ts";
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

/**
 * One parameter's optimizer state. The moments are read out of the group's packed arrays on each access:
 * fresh tensors of the parameter's shape in the state dtype (f32, or f64 for f64 parameters).
 */
export interface AdamWParamState {
  /** Steps taken for this parameter (parameters without a gradient skip a step, as in torch). */
  readonly step: number;
  /** First moment (torch's `exp_avg`), a copy. */
  readonly expAvg: Tensor;
  /** Second moment (torch's `exp_avg_sq`), a copy. */
  readonly expAvgSq: Tensor;
}

/** The parameters of one device and dtype, and their packed moments. */
interface ParamGroup {
  readonly device: Device;
  readonly dtype: DType;
  /** Indices into {@link AdamW.params}. */
  readonly index: number[];
  /** Element offset of each parameter's segment (aligned for word copies). */
  readonly offsets: number[];
  readonly sizes: number[];
  /** Elements of the packed arrays. */
  total: number;
  /** Packed exp_avg and exp_avg_sq (state dtype), null until the group's first step. */
  expAvg: Storage | null;
  expAvgSq: Storage | null;
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
  /** Per parameter: steps taken (0 before its first update). */
  readonly #steps: number[];
  /** Parameter groups by device and dtype, made at the first step (or state load). */
  #groups: ParamGroup[] | null = null;
  /** Per parameter: its group (filled with {@link #groups}). */
  #groupOf: ParamGroup[] = [];

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
    this.#steps = this.params.map(() => 0);
  }

  /** Per parameter: step count and moments (copies), null before its first update. */
  get state(): (AdamWParamState | null)[] {
    return this.params.map((_, i) => {
      if (this.#steps[i] === 0) return null;
      const moment = (which: "expAvg" | "expAvgSq") => () => this.#moment(i, which);
      return Object.defineProperties({ step: this.#steps[i] } as AdamWParamState, {
        expAvg: { get: moment("expAvg"), enumerable: true },
        expAvgSq: { get: moment("expAvgSq"), enumerable: true },
      });
    });
  }

  /**
   * Frees the optimizer's device memory (the packed moments of every group); idempotent. The parameters are
   * untouched, and a later `step()` starts the moments from zero again, as a new optimizer would.
   */
  dispose(): void {
    for (const g of this.#groups ?? []) {
      for (const which of ["expAvg", "expAvgSq"] as const) {
        const s = g[which];
        if (s !== null && g.device.lostReason === null) g.device.backend.free(s);
        g[which] = null;
      }
    }
    this.#steps.fill(0);
  }

  /** Same as {@link AdamW.dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** A copy of one parameter's moment out of its group's packed array. */
  #moment(i: number, which: "expAvg" | "expAvgSq"): Tensor {
    const p = this.params[i];
    const g = this.#group(i);
    const k = g.index.indexOf(i);
    const packed = g[which]!;
    const [s] = g.device.backend.unpack(packed, [g.offsets[k]], [g.sizes[k]]);
    return fromStorage(s, p.shape, packed.dtype, g.device);
  }

  /** The group holding parameter i. */
  #group(i: number): ParamGroup {
    this.#layout();
    return this.#groupOf[i];
  }

  /** The groups: parameters split by device and dtype, each packed in list order. */
  #layout(): ParamGroup[] {
    if (this.#groups !== null) return this.#groups;
    const groups: ParamGroup[] = [];
    this.params.forEach((p, i) => {
      let g = groups.find((g) => g.device === p.device && g.dtype === p.dtype);
      if (g === undefined) {
        g = {
          device: p.device,
          dtype: p.dtype,
          index: [],
          offsets: [],
          sizes: [],
          total: 0,
          expAvg: null,
          expAvgSq: null,
        };
        groups.push(g);
      }
      // Segments start on whole 4-byte words, so a GPU packs them with plain buffer copies.
      const align = packAlignment(p.dtype);
      const offset = Math.ceil(g.total / align) * align;
      g.index.push(i);
      g.offsets.push(offset);
      g.sizes.push(p.size);
      g.total = offset + p.size;
      this.#groupOf[i] = g;
    });
    this.#groups = groups;
    return groups;
  }

  /**
   * Applies one update to every parameter that has a gradient: per device and dtype, two packings, one
   * kernel and one unpacking (synchronous: nothing is read back).
   */
  step(): void {
    checkHyper(this);
    const [beta1, beta2] = this.betas;
    const { lr, eps, weightDecay } = this;
    const groups = this.#layout();
    // Everything that can throw runs first: a bad gradient leaves every parameter as it was.
    this.params.forEach((p, i) => {
      const g = p.grad;
      if (p.device !== this.#group(i).device) {
        throw new DeviceError(
          `AdamW.step: parameter ${i} moved to another device after the optimizer was set up`,
        );
      }
      if (g === null) return;
      if (g.shape.join() !== p.shape.join()) {
        throw new ShapeError(
          `AdamW.step: gradient [${g.shape}] of parameter ${i} does not match [${p.shape}]`,
        );
      }
      if (g.dtype !== p.dtype) {
        throw new DTypeError(
          `AdamW.step: gradient of parameter ${i} is ${g.dtype}, the parameter ${p.dtype}`,
        );
      }
      if (g.device !== p.device) {
        throw new DeviceError(
          `AdamW.step: gradient of parameter ${i} is on another device than the parameter`,
        );
      }
      g.storage("AdamW.step");
      p.storage("AdamW.step");
    });
    for (const group of groups) {
      const active = group.index.map((i) => this.params[i].grad !== null);
      if (!active.includes(true)) continue;
      const be = group.device.backend;
      const stateDType = adamwStateDType(group.dtype);
      group.expAvg ??= be.fill(group.total, 0, stateDType);
      group.expAvgSq ??= be.fill(group.total, 0, stateDType);
      const segments: AdamWSegment[] = group.index.map((i, k) => {
        if (active[k]) this.#steps[i] += 1;
        const step = Math.max(1, this.#steps[i]);
        return { offset: group.offsets[k], size: group.sizes[k], step, active: active[k] };
      });
      // Inactive parameters are not packed: their segments of the new values are never copied out.
      const params = group.index.map((i, k) => active[k] ? this.params[i].storage() : null);
      const grads = group.index.map((i, k) => active[k] ? this.params[i].grad!.storage() : null);
      const packedP = be.pack(params, group.offsets, group.total, group.dtype);
      const packedG = be.pack(grads, group.offsets, group.total, group.dtype);
      const [newP, newM, newV] = be.run(ADAMW, [packedP, packedG, group.expAvg, group.expAvgSq], {
        total: group.total,
        segments,
        lr,
        beta1,
        beta2,
        eps,
        weightDecay,
      });
      for (const s of [packedP, packedG, group.expAvg, group.expAvgSq]) be.free(s);
      group.expAvg = newM;
      group.expAvgSq = newV;
      const ks = active.flatMap((a, k) => a ? [k] : []);
      const outs = be.unpack(newP, ks.map((k) => group.offsets[k]), ks.map((k) => group.sizes[k]));
      be.free(newP);
      ks.forEach((k, j) => this.params[group.index[k]]._replaceStorage(outs[j]));
    }
  }

  /** Clears every parameter's gradient (set to null, torch's default), freeing its memory. */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** The state in torch's layout; the moments are copies out of the packed state (f32, f64 for f64). */
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
    const restored: ({ step: number; expAvg: Tensor; expAvgSq: Tensor } | null)[] = this.params.map(() =>
      null
    );
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
    // Each group's packed moments are rebuilt from the restored ones (zeros where none was saved).
    for (const g of this.#layout()) {
      const be = g.device.backend;
      const stateDType = adamwStateDType(g.dtype);
      for (const which of ["expAvg", "expAvgSq"] as const) {
        const parts = g.index.map((i, k) =>
          restored[i]?.[which].storage() ?? be.fill(g.sizes[k], 0, stateDType)
        );
        const packed = be.pack(parts, g.offsets, g.total, stateDType);
        g.index.forEach((i, k) => restored[i] === null && be.free(parts[k]));
        if (g[which] !== null) be.free(g[which]!);
        g[which] = packed;
      }
    }
    restored.forEach((s, i) => {
      this.#steps[i] = s?.step ?? 0;
      s?.expAvg.dispose();
      s?.expAvgSq.dispose();
    });
  }
}

/** A moment buffer as loadStateDict takes it. */
export type StateTensor = Tensor | { shape: readonly number[]; data: ArrayLike<number> };

/** A fresh tensor on p's device in p's state dtype holding `src` (Module.loadStateDict converts). */
function copyLike(src: StateTensor, p: Tensor, i: number, what: string): Tensor {
  if (src.shape.length !== p.shape.length || src.shape.some((d, j) => d !== p.shape[j])) {
    throw new ShapeError(
      `AdamW.loadStateDict: ${what} of parameter ${i} has shape [${src.shape}], the parameter [${p.shape}]`,
    );
  }
  const holder = Object.assign(new Module(), {
    value: keep(zeros(p.shape, { device: p.device, dtype: adamwStateDType(p.dtype) })),
  });
  holder.loadStateDict({ value: src });
  return holder.value;
}
