/**
 * Learning-rate schedules: linear warmup then cosine decay, as transformers'
 * `get_cosine_schedule_with_warmup` (with an optional floor), driving an optimizer's `lr` like torch's
 * LambdaLR: construction sets step 0's rate, each `step()` moves to the next.
 * @module
 */
import { ConfigError } from "../core/errors.ts";

/** Options of {@link warmupCosineFactor} and {@link WarmupCosineSchedule}. */
export interface WarmupCosineOptions {
  /** Steps of linear growth from 0 to the base rate. */
  warmupSteps: number;
  /** Step at which the cosine reaches its floor. */
  totalSteps: number;
  /** Floor as a fraction of the base rate (default 0). */
  minRatio?: number;
}

function checkOptions(o: WarmupCosineOptions): void {
  if (!Number.isInteger(o.warmupSteps) || o.warmupSteps < 0) {
    throw new ConfigError(`warmupCosine: warmupSteps must be a non-negative integer, got ${o.warmupSteps}`);
  }
  if (!Number.isInteger(o.totalSteps) || o.totalSteps <= o.warmupSteps) {
    throw new ConfigError(
      `warmupCosine: totalSteps ${o.totalSteps} must be an integer above warmupSteps ${o.warmupSteps}`,
    );
  }
  const m = o.minRatio ?? 0;
  if (typeof m !== "number" || !(m >= 0 && m <= 1)) {
    throw new ConfigError(`warmupCosine: minRatio must be in [0, 1], got ${o.minRatio}`);
  }
}

/**
 * The multiplier of the base rate at `step`: step / warmupSteps during warmup, then
 * minRatio + (1 − minRatio) · ½(1 + cos(π · progress)), progress clamped to [0, 1].
 */
export function warmupCosineFactor(step: number, opts: WarmupCosineOptions): number {
  checkOptions(opts);
  const { warmupSteps, totalSteps } = opts;
  const minRatio = opts.minRatio ?? 0;
  if (step < warmupSteps) return step / Math.max(1, warmupSteps);
  const progress = Math.min(1, (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps));
  return minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** Anything with a learning rate to drive. */
export interface HasLearningRate {
  /** The rate the schedule sets. */
  lr: number;
}

/** Sets `optimizer.lr` to baseLr · {@link warmupCosineFactor}(step) as steps go by. */
export class WarmupCosineSchedule {
  /** What the schedule drives. */
  readonly optimizer: HasLearningRate;
  /** The rate at the end of warmup. */
  readonly baseLr: number;
  /** The schedule's settings. */
  readonly opts: WarmupCosineOptions;
  /** Steps taken so far (the rate now set is for this step). */
  lastStep = 0;

  /** Takes the optimizer's current lr as the base rate and sets step 0's rate. */
  constructor(optimizer: HasLearningRate, opts: WarmupCosineOptions) {
    checkOptions(opts);
    this.optimizer = optimizer;
    this.baseLr = optimizer.lr;
    this.opts = { ...opts };
    optimizer.lr = this.lrAt(0);
  }

  /** The rate at `step`. */
  lrAt(step: number): number {
    return this.baseLr * warmupCosineFactor(step, this.opts);
  }

  /** Advances one step and sets the optimizer's rate for it. */
  step(): void {
    this.lastStep += 1;
    this.optimizer.lr = this.lrAt(this.lastStep);
  }

  /** Position, for checkpoints. */
  stateDict(): { lastStep: number; baseLr: number } {
    return { lastStep: this.lastStep, baseLr: this.baseLr };
  }

  /** Restores a position saved by {@link stateDict} (the base rate must match). */
  loadStateDict(sd: { lastStep: number; baseLr?: number }): void {
    if (!Number.isInteger(sd?.lastStep) || sd.lastStep < 0) {
      throw new ConfigError(
        `WarmupCosineSchedule.loadStateDict: lastStep must be a non-negative integer, got ${sd?.lastStep}`,
      );
    }
    if (sd.baseLr !== undefined && sd.baseLr !== this.baseLr) {
      throw new ConfigError(
        `WarmupCosineSchedule.loadStateDict: saved base rate ${sd.baseLr} differs from ${this.baseLr}`,
      );
    }
    this.lastStep = sd.lastStep;
    this.optimizer.lr = this.lrAt(this.lastStep);
  }
}
