/**
 * A training loop for causal LMs: forward with labels, backward, optional clipping, optimizer and
 * scheduler steps, each step inside a memory scope so its activations are freed at once. Losses stay on
 * the device and are read back in one transfer every `logEvery` steps (each read is a wait on the GPU,
 * ≥ 11 ms in Deno), which is also when progress is reported and checkpoints are written.
 * @module
 */
import { Module } from "../nn/module.ts";
import { add, concat, detach, reshape, square, sum, type Tensor, tidy } from "../tensor/mod.ts";
import { AdamW } from "../optim/adamw.ts";
import { clipGradNorm } from "../optim/clip.ts";
import type { TokenInput } from "../models/llama.ts";
import { type CheckpointableSchedule, loadCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { ConfigError, DeviceError, LoraError, ShapeError } from "../core/errors.ts";
import { estimateStepBytes } from "./step_memory.ts";
import { checkOptionalBoolean, checkOptionKeys, showValue } from "../core/options.ts";
import { ProgressLine, type ProgressLineOptions, standardErrorOutput } from "./progress.ts";

/** Names of {@link TrainOptions}. */
const TRAIN_OPTION_KEYS = [
  "model",
  "optimizer",
  "batches",
  "steps",
  "logEvery",
  "onProgress",
  "progress",
  "scheduler",
  "clipNorm",
  "checkpointDir",
  "resumeFrom",
  "skipNonFinite",
] as const;

/**
 * Checks every option before the first step, so that a bad one fails at once rather than after minutes
 * of training (a bad `onProgress` or `checkpointDir` would otherwise surface at the first report).
 */
function checkTrainOptions(options: TrainOptions): void {
  if (options === null || typeof options !== "object") {
    throw new ConfigError(
      `train: options must be an object { model, optimizer, batches, steps, ... }, got ${showValue(options)}`,
    );
  }
  const o = checkOptionKeys(options, TRAIN_OPTION_KEYS, "train") as Partial<TrainOptions>;
  if (!(o.model instanceof Module) || typeof o.model.forward !== "function") {
    throw new ConfigError(
      `train: model must be a Module whose forward returns { loss }, got ${showValue(o.model)}`,
    );
  }
  if (!(o.optimizer instanceof AdamW)) {
    throw new ConfigError(`train: optimizer must be an AdamW, got ${showValue(o.optimizer)}`);
  }
  if (o.onProgress !== undefined && typeof o.onProgress !== "function") {
    throw new ConfigError(`train: onProgress must be a function, got ${showValue(o.onProgress)}`);
  }
  const s = o.scheduler;
  if (
    s !== undefined && s !== null &&
    (typeof s !== "object" || typeof s.step !== "function" || typeof s.stateDict !== "function" ||
      typeof s.loadStateDict !== "function")
  ) {
    throw new ConfigError(
      `train: scheduler must have step(), stateDict() and loadStateDict() (e.g. WarmupCosineSchedule), got ${
        showValue(s)
      }`,
    );
  }
  if (o.clipNorm !== undefined && !(typeof o.clipNorm === "number" && o.clipNorm > 0)) {
    throw new ConfigError(`train: clipNorm must be a positive number, got ${showValue(o.clipNorm)}`);
  }
  for (const key of ["checkpointDir", "resumeFrom"] as const) {
    const v = o[key];
    if (v !== undefined && (typeof v !== "string" || v === "")) {
      throw new ConfigError(`train: ${key} must be a non-empty directory path, got ${showValue(v)}`);
    }
  }
  checkOptionalBoolean(o.skipNonFinite, "skipNonFinite", "train");
  const p = o.progress;
  if (
    p !== undefined && typeof p !== "boolean" &&
    (p === null || typeof p !== "object" || typeof p.write !== "function" || typeof p.tty !== "boolean" ||
      (p.every !== undefined && !(Number.isInteger(p.every) && p.every > 0)))
  ) {
    throw new ConfigError(
      `train: progress must be true, false or { write(text), tty: boolean, every?: positive integer }, got ${
        showValue(p)
      }`,
    );
  }
}

/**
 * The progress line `progress` asks for, or null: without a terminal a plain line about every tenth of the
 * run (and never more often than the reports come).
 */
function progressLine(
  progress: TrainOptions["progress"],
  steps: number,
  logEvery: number,
): ProgressLine | null {
  if (progress === undefined || progress === false) return null;
  const every = Math.max(logEvery, Math.round(steps / 10));
  return new ProgressLine(progress === true ? { ...standardErrorOutput(), every } : { every, ...progress });
}

/** One training batch. */
export interface TrainBatch {
  /** Token ids [batch, seq]. */
  inputIds: TokenInput;
  /** Default: the input ids, with −100 where `attentionMask` is 0. */
  labels?: TokenInput;
  /** 1 for real tokens, 0 for padding. */
  attentionMask?: TokenInput;
}

/** A model the loop can train: a forward taking labels and returning a loss. */
export interface TrainableLM extends Module {
  /** Returns the mean loss when given labels. */
  forward(
    inputIds: TokenInput,
    opts: { labels?: TokenInput; attentionMask?: TokenInput },
  ): { loss: Tensor | null };
}

/** A schedule the loop steps once per optimizer step. */
export interface StepSchedule extends CheckpointableSchedule {
  /** Advances one optimizer step. */
  step(): void;
}

/** What `onProgress` receives every `logEvery` steps and after the last one. */
export interface TrainProgress {
  /** Steps completed. */
  step: number;
  /** The step count the run aims at. */
  totalSteps: number;
  /** Mean loss of the steps since the previous report. */
  loss: number;
  /** Each of those steps' losses. */
  losses: number[];
  /** Learning rate now set. */
  lr: number;
  /** Tokens (non-padding) per second over those steps. */
  tokensPerSecond: number;
  /** Estimated seconds to `totalSteps` at the rate of this run so far. */
  etaSeconds: number;
  /** Seconds since this call started. */
  elapsedSeconds: number;
  /** Steps whose update was skipped because the loss or a gradient was not finite (see `skipNonFinite`). */
  skippedSteps: number[];
}

/** Options of {@link train}. */
export interface TrainOptions {
  /** The model to train (only its optimizer's parameters change). */
  model: TrainableLM;
  /** Updates the trainable parameters. */
  optimizer: AdamW;
  /** Step s uses `batches[s % batches.length]`, or `batches(s)`: a resumed run sees the same data. */
  batches: TrainBatch[] | ((step: number) => TrainBatch);
  /** Total steps (a resumed run continues from its checkpoint's step to this). */
  steps: number;
  /** Read losses, report and (with checkpointDir) checkpoint every this many steps (default 10). */
  logEvery?: number;
  /** Called every `logEvery` steps and after the last. */
  onProgress?: (p: TrainProgress) => void;
  /**
   * Draw a progress line (step, bar, loss, tokens/s, ETA) at every report: true draws it on standard error,
   * redrawn in place on a terminal and as a plain line about every tenth of the run otherwise (a log, a
   * pipe, a browser's console); or say where it goes with `{ write, tty, every }`. Default false.
   */
  progress?: boolean | ProgressLineOptions;
  /** Stepped once per optimizer step (its position is checkpointed). */
  scheduler?: StepSchedule | null;
  /** Clip the global gradient norm to this before each step. */
  clipNorm?: number;
  /** Write a checkpoint here at every report (see saveCheckpoint); the last one after the final step. */
  checkpointDir?: string;
  /** Restore model adapter, optimizer and scheduler from this checkpoint directory first. */
  resumeFrom?: string;
  /**
   * Check every step that the loss and the gradients are finite, and skip the update (optimizer and
   * scheduler) of a step where they are not, reporting it in `skippedSteps`. Costs one read-back per
   * step (≥ 11 ms on WebGPU in Deno), so it is off by default.
   */
  skipNonFinite?: boolean;
}

/** What {@link train} returns. */
export interface TrainResult {
  /** Steps completed (including those before a resume). */
  step: number;
  /** Loss of every completed step, from the checkpoint's history on when resumed. */
  losses: number[];
  /** Steps (1-based, like `step`) whose update was skipped for non-finite values. */
  skippedSteps: number[];
}

/** Squared L2 norm of all gradients as a 0-d tensor: non-finite exactly when some gradient is. */
function gradSquaredNorm(params: readonly Tensor[]): Tensor | null {
  let total: Tensor | null = null;
  for (const p of params) {
    if (p.grad === null) continue;
    const s = sum(square(p.grad));
    total = total === null ? s : add(total, s);
  }
  return total;
}

function toRows(input: TokenInput): { data: ArrayLike<number>; shape: readonly number[] } {
  if (Array.isArray(input)) return { data: input.flat(), shape: [input.length, input[0]?.length ?? 0] };
  return input;
}

/** The model's `config.maxPositionEmbeddings` where it has one (transformers' max_position_embeddings). */
function maxPositionsOf(model: Module): number | null {
  const v = (model as { config?: { maxPositionEmbeddings?: unknown } }).config?.maxPositionEmbeddings;
  return typeof v === "number" && Number.isInteger(v) && v > 0 ? v : null;
}

/** Labels defaulting to the inputs with padding ignored; and the count of real tokens. */
function prepare(
  batch: TrainBatch,
  step: number,
  maxPositions: number | null,
): { labels: TokenInput; tokens: number } {
  if (batch === null || typeof batch !== "object" || batch.inputIds === undefined) {
    throw new ConfigError(
      `train: the batch for step ${step + 1} must be an object with inputIds, got ${showValue(batch)}`,
    );
  }
  const ids = toRows(batch.inputIds);
  // Longer sequences would run attention past the trained positions and grow memory without bound.
  if (maxPositions !== null && ids.shape[1] > maxPositions) {
    throw new ShapeError(
      `train: the batch for step ${step + 1} has inputIds [${ids.shape}], sequences of ${ids.shape[1]} ` +
        `tokens, beyond the model's max_position_embeddings (${maxPositions}); cut them to at most ` +
        `${maxPositions} tokens`,
    );
  }
  const mask = batch.attentionMask === undefined ? null : toRows(batch.attentionMask);
  if (mask !== null && mask.data.length !== ids.data.length) {
    throw new ShapeError(`train: attentionMask [${mask.shape}] does not match inputIds [${ids.shape}]`);
  }
  let tokens = ids.data.length;
  if (mask !== null) {
    tokens = 0;
    for (let i = 0; i < mask.data.length; i++) tokens += mask.data[i] === 1 ? 1 : 0;
  }
  if (batch.labels !== undefined) return { labels: batch.labels, tokens };
  const data = Array.from(ids.data, (v, i) => (mask !== null && mask.data[i] === 0 ? -100 : v));
  return { labels: { data, shape: ids.shape }, tokens };
}

/** The device of the model's first parameter (where its steps run), or null for a model without any. */
function deviceOf(model: Module) {
  return model.parameters()[0]?.device ?? null;
}

/**
 * Refuses a step whose estimated memory (see step_memory.ts) would pass the device's budget, before any of
 * its work is queued: a DeviceError naming the step, its batch and the bytes. The device, the model and the
 * optimizer are as before, so a smaller batch can follow on the same device.
 */
function checkStepFits(model: Module, optimizer: AdamW, batch: TrainBatch, step: number): void {
  const device = deviceOf(model);
  const limit = device?.memoryLimit ?? null;
  if (device === null || limit === null) return;
  const shape = toRows(batch.inputIds).shape;
  const tokens = shape[0] * shape[1];
  const need = estimateStepBytes(model, optimizer, tokens);
  const live = device.memory().bytes;
  if (need === null || live + need <= limit) return;
  throw new DeviceError(
    `train: step ${step + 1} (forward, backward and optimizer step of inputIds [${shape}], ${tokens} ` +
      `tokens) needs about ${need} bytes with ${live} bytes live, past device ${device}'s memory limit of ` +
      `${limit} bytes (setMemoryLimit); nothing of this step was queued. Use a smaller batch or shorter ` +
      `sequences, or raise the limit`,
  );
}

/**
 * Trains `model` for `steps` steps (from 0, or from the checkpoint's step with `resumeFrom`) and
 * returns every step's loss. Everything but the periodic read-back stays on the model's device.
 */
export async function train(opts: TrainOptions): Promise<TrainResult> {
  checkTrainOptions(opts);
  const { model, optimizer, batches, steps } = opts;
  const logEvery = opts.logEvery ?? 10;
  if (!Number.isInteger(steps) || steps < 0) {
    throw new ConfigError(`train: steps must be a non-negative integer, got ${steps}`);
  }
  if (!Number.isInteger(logEvery) || logEvery < 1) {
    throw new ConfigError(`train: logEvery must be a positive integer, got ${opts.logEvery}`);
  }
  if (Array.isArray(batches) ? batches.length === 0 : typeof batches !== "function") {
    throw new ConfigError(`train: batches must be a non-empty array or a function of the step`);
  }
  const scheduler = opts.scheduler ?? null;
  let step = 0;
  let losses: number[] = [];
  if (opts.resumeFrom !== undefined) {
    let state;
    try {
      state = await loadCheckpoint(opts.resumeFrom, { model, optimizer, scheduler });
    } catch (err) {
      // The user called train: say so, keeping the error's class (ConfigError for a bad path, ...).
      if (!(err instanceof LoraError)) throw err;
      const Kind = err.constructor as new (message: string) => LoraError;
      throw new Kind(`train (resumeFrom): ${err.message}`);
    }
    step = state.step;
    losses = state.losses.slice(0, step);
  }
  const params = optimizer.params;
  const started = performance.now();
  const firstStep = step;
  let windowStart = started;
  let windowTokens = 0;
  let pending: Tensor[] = [];
  const skippedSteps: number[] = [];
  optimizer.zeroGrad();
  const wasTraining = model.training;
  const bar = progressLine(opts.progress, steps, logEvery);
  const maxPositions = maxPositionsOf(model);
  model.train();
  try {
    while (step < steps) {
      const batch = Array.isArray(batches) ? batches[step % batches.length] : batches(step);
      const { labels, tokens } = prepare(batch, step, maxPositions);
      checkStepFits(model, optimizer, batch, step);
      const update = () => {
        if (opts.clipNorm !== undefined) clipGradNorm(params, opts.clipNorm);
        optimizer.step();
        optimizer.zeroGrad();
        scheduler?.step();
      };
      const forwardBackward = () => {
        const out = model.forward(batch.inputIds, { labels, attentionMask: batch.attentionMask });
        if (out.loss === null) throw new ConfigError(`train: the model returned no loss`);
        out.loss.backward();
        return detach(out.loss);
      };
      let loss: Tensor;
      if (opts.skipNonFinite) {
        const [l, check] = tidy(() => {
          const l = forwardBackward();
          const sq = gradSquaredNorm(params);
          return [l, sq === null ? l : add(sq, l)] as const; // finite iff the loss and every gradient are
        });
        const finite = Number.isFinite(await check.item());
        if (check !== l) check.dispose();
        if (finite) tidy(update);
        else {
          optimizer.zeroGrad();
          skippedSteps.push(step + 1);
        }
        loss = l;
      } else {
        try {
          loss = tidy(() => {
            const l = forwardBackward();
            update();
            return l;
          });
        } catch (err) {
          // A step that failed midway (an op past the memory limit, say) leaves no partial gradients: its
          // tensors went with the tidy scope, and the device is as before the step.
          optimizer.zeroGrad();
          throw err;
        }
      }
      pending.push(loss);
      windowTokens += tokens;
      step += 1;
      if (step % logEvery !== 0 && step !== steps) continue;
      const read = tidy(() => concat(pending.map((l) => reshape(l, [1])), 0));
      const values = Array.from(await read.data());
      read.dispose();
      for (const l of pending) l.dispose();
      pending = [];
      if (!opts.skipNonFinite) {
        const bad = values.findIndex((v) => !Number.isFinite(v));
        if (bad >= 0) {
          const at = step - values.length + bad + 1;
          throw new ConfigError(
            `train: the loss at step ${at} is ${values[bad]}; training stopped (steps read back together ` +
              `ran to step ${step}, so the adapter weights may be non-finite now; no checkpoint was written ` +
              `for these steps). Lower the learning rate (now ${optimizer.lr}), set clipNorm, or pass ` +
              `skipNonFinite: true to skip such steps`,
          );
        }
      }
      losses.push(...values);
      const now = performance.now();
      const elapsed = (now - started) / 1000;
      const perStep = elapsed / (step - firstStep);
      const report: TrainProgress = {
        step,
        totalSteps: steps,
        loss: values.reduce((a, b) => a + b, 0) / values.length,
        losses: values,
        lr: optimizer.lr,
        tokensPerSecond: windowTokens / Math.max((now - windowStart) / 1000, 1e-9),
        etaSeconds: perStep * (steps - step),
        elapsedSeconds: elapsed,
        skippedSteps: [...skippedSteps],
      };
      bar?.update(report);
      opts.onProgress?.(report);
      windowStart = now;
      windowTokens = 0;
      if (opts.checkpointDir !== undefined) {
        await saveCheckpoint(opts.checkpointDir, { model, optimizer, step, scheduler, losses });
      }
    }
  } finally {
    bar?.finish(); // later output starts on a fresh line, also when a step threw
    model.train(wasTraining); // leave the mode as the caller had it
  }
  return { step, losses, skippedSteps };
}
