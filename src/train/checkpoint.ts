/**
 * Training checkpoints: the adapter in PEFT's layout (so the directory is also a loadable adapter),
 * the optimizer's moment buffers in `optimizer.safetensors` keyed by parameter name, and step counts,
 * hyperparameters, scheduler position and loss history in `trainer_state.json`. A checkpoint is saved
 * all-or-nothing across its files (writeDirAtomic in src/io/fs.ts: a complete new folder switched in by
 * one rename), and loaded from one resolved folder, so a reader never mixes two checkpoints.
 * @module
 */
import type { Module } from "../nn/module.ts";
import { fromStorage, type Tensor } from "../tensor/mod.ts";
import type { AdamW } from "../optim/adamw.ts";
import { type RawTensorEntry, readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { joinPath, pathKind, readFileBytes, readFileText, resolveDir, writeDirAtomic } from "../io/fs.ts";
import {
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
  adapterToFilesAsync,
  PEFT_KEY_PREFIX as PEFT_PREFIX,
} from "../peft/adapter.ts";
import { ConfigError, FormatError } from "../core/errors.ts";

/** File holding the optimizer's moment buffers. */
export const OPTIMIZER_WEIGHTS_NAME = "optimizer.safetensors";
/** File holding step counts, hyperparameters, scheduler position and losses. */
export const TRAINER_STATE_NAME = "trainer_state.json";

/** A learning-rate schedule a checkpoint can restore. */
export interface CheckpointableSchedule {
  /** The schedule's position. */
  stateDict(): Record<string, unknown>;
  /** Restores a position from {@link stateDict}. */
  loadStateDict(sd: Record<string, unknown>): void;
}

/** What `trainer_state.json` holds. */
export interface TrainerState {
  /** Identifies the file's layout. */
  format: "lora-webgpu-trainer/1";
  /** Steps completed. */
  step: number;
  /** Optimizer hyperparameters and per-parameter step counts. */
  optimizer: {
    lr: number;
    betas: [number, number];
    eps: number;
    weight_decay: number;
    /** Per parameter name: steps it has taken (absent: never updated). */
    steps: Record<string, number>;
  };
  /** The schedule's position, null without one. */
  scheduler: Record<string, unknown> | null;
  /** Loss of every completed step. */
  losses: number[];
  /**
   * SHA-256 (hex) of the adapter weights and optimizer files, by file name. A save that failed after replacing
   * some files (a rename refused midway) leaves files of two saves side by side; loading checks these so
   * that such a mix is refused instead of resuming with the new adapter and the old optimizer state.
   * Absent in checkpoints written before it existed.
   */
  files?: Record<string, string>;
}

/** Hex SHA-256 of `data` (WebCrypto: Deno, Node ≥ 19, Bun and browsers all have it). */
async function sha256(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The optimizer's parameters by their names in `model` (every one must belong to it). */
function optimizerNames(model: Module, optimizer: AdamW, op: string): string[] {
  const byTensor = new Map(model.namedParameters().map(([n, t]) => [t, n]));
  return optimizer.params.map((p, i) => {
    const name = byTensor.get(p);
    if (name === undefined) {
      throw new ConfigError(`${op}: optimizer parameter ${i} [${p.shape}] is not a parameter of the model`);
    }
    return name;
  });
}

/**
 * Writes a checkpoint of `model`'s adapter and `optimizer`'s state into `dir` (created when missing).
 * Only the adapter weights are saved: the optimizer must train exactly the model's LoRA weights.
 */
export async function saveCheckpoint(
  dir: string,
  args: {
    model: Module;
    optimizer: AdamW;
    step: number;
    scheduler?: CheckpointableSchedule | null;
    losses?: number[];
  },
): Promise<void> {
  const { model, optimizer } = args;
  const names = optimizerNames(model, optimizer, "saveCheckpoint");
  const adapter = await adapterToFilesAsync(model, {}, "saveCheckpoint");
  const adapterKeys = new Set(readSafetensors(adapter[ADAPTER_WEIGHTS_NAME]).tensors.keys());
  for (const n of names) {
    if (!adapterKeys.has(PEFT_PREFIX + n)) {
      throw new ConfigError(
        `saveCheckpoint: the optimizer trains ${n}, which is not an adapter weight; checkpoints hold the ` +
          `adapter and optimizer state only`,
      );
    }
  }
  const moments: Record<string, RawTensorEntry> = {};
  const steps: Record<string, number> = {};
  // Every moment as a copy out of AdamW's packed buffers (freed here), then all of them packed into one
  // tensor read back at once: a read waits for the device (>= 11 ms on WebGPU in Deno), and one read per moment made a
  // SmolLM2-135M checkpoint (420 moments) take about 10 s on the H200.
  const entries: { t: Tensor; key: string; shape: number[]; dtype: "F32" | "F64" }[] = [];
  for (let i = 0; i < names.length; i++) {
    const s = optimizer.state[i];
    if (s === null) continue;
    steps[names[i]] = s.step;
    for (const key of ["exp_avg", "exp_avg_sq"] as const) {
      const t: Tensor = key === "exp_avg" ? s.expAvg : s.expAvgSq;
      entries.push({
        t,
        key: `${names[i]}.${key}`,
        shape: [...t.shape],
        dtype: t.dtype === "f64" ? "F64" : "F32",
      });
    }
  }
  try {
    // Grouped by device and dtype (one group in practice), each group packed into one tensor and read.
    const groups = new Map<string, typeof entries>();
    for (const e of entries) {
      const k = `${e.t.device.kind}:${e.t.device.name}:${e.t.dtype}`;
      const g = groups.get(k) ?? [];
      g.push(e);
      groups.set(k, g);
    }
    for (const g of groups.values()) {
      const { device, dtype } = g[0].t;
      const offsets: number[] = [];
      let total = 0;
      for (const e of g) offsets.push(total), total += e.t.size;
      const joined = fromStorage(
        device.backend.pack(g.map((e) => e.t.storage("saveCheckpoint")), offsets, total, dtype),
        [total],
        dtype,
        device,
      );
      let flat: Float32Array | Float64Array;
      try {
        flat = (await joined.data()) as Float32Array | Float64Array;
      } finally {
        joined.dispose();
      }
      g.forEach((e, j) => {
        moments[e.key] = {
          dtype: e.dtype,
          shape: e.shape,
          data: flat.slice(offsets[j], offsets[j] + e.t.size),
        };
      });
    }
  } finally {
    for (const e of entries) e.t.dispose();
  }
  const contents: Record<string, Uint8Array | string> = {
    [ADAPTER_WEIGHTS_NAME]: adapter[ADAPTER_WEIGHTS_NAME],
    [ADAPTER_CONFIG_NAME]: adapter[ADAPTER_CONFIG_NAME],
    [OPTIMIZER_WEIGHTS_NAME]: writeSafetensors(moments),
  };
  // The tensors only: adapter_config.json may be rewritten on purpose (saveAdapter into the checkpoint
  // adds base_model_name_or_path), and a config mixed up with other weights fails their shape checks.
  const files: Record<string, string> = {};
  for (const name of [ADAPTER_WEIGHTS_NAME, OPTIMIZER_WEIGHTS_NAME]) {
    files[name] = await sha256(contents[name]);
  }
  const state: TrainerState = {
    format: "lora-webgpu-trainer/1",
    step: args.step,
    optimizer: {
      lr: optimizer.lr,
      betas: [...optimizer.betas],
      eps: optimizer.eps,
      weight_decay: optimizer.weightDecay,
      steps,
    },
    scheduler: args.scheduler?.stateDict() ?? null,
    losses: args.losses ?? [],
    files,
  };
  await writeDirAtomic(dir, {
    ...contents,
    [TRAINER_STATE_NAME]: JSON.stringify(state, null, 2) + "\n",
  }, { op: "saveCheckpoint" });
}

async function readRequired(dir: string, name: string): Promise<Uint8Array> {
  const path = joinPath(dir, name);
  if ((await pathKind(path)) !== "file") throw new FormatError(`loadCheckpoint: ${path} does not exist`);
  return await readFileBytes(path);
}

/**
 * Restores a checkpoint written by {@link saveCheckpoint} into a model that already carries the same
 * adapters (adapter weights are copied into them), the optimizer, and the scheduler. Returns the
 * trainer state (step and loss history).
 * @throws {ConfigError} when `dir` does not exist or is a file, or the optimizer's parameters are not the
 *   checkpoint's; {@link FormatError} for files missing from it or malformed, or missing keys
 */
export async function loadCheckpoint(
  dir: string,
  args: { model: Module; optimizer: AdamW; scheduler?: CheckpointableSchedule | null },
): Promise<TrainerState> {
  const { model, optimizer } = args;
  const names = optimizerNames(model, optimizer, "loadCheckpoint");
  // Every file from the one save `dir` points at now, even if another save switches it meanwhile.
  dir = await resolveDir(dir);
  // A path that leads nowhere is a bad argument (ConfigError, API.md's Errors); a checkpoint folder
  // lacking one of its files is a bad save (FormatError, below).
  const kind = await pathKind(dir);
  if (kind !== "dir") {
    throw new ConfigError(
      `loadCheckpoint: the checkpoint directory ${dir} ${
        kind === null ? "does not exist" : "is a file, not a directory"
      }`,
    );
  }
  const statePath = joinPath(dir, TRAINER_STATE_NAME);
  if ((await pathKind(statePath)) !== "file") {
    throw new FormatError(`loadCheckpoint: ${statePath} does not exist`);
  }
  let state: TrainerState;
  try {
    state = JSON.parse(await readFileText(statePath));
  } catch (e) {
    throw new FormatError(`loadCheckpoint: ${statePath} is not valid JSON (${(e as Error).message})`);
  }
  if (state?.format !== "lora-webgpu-trainer/1" || !Number.isInteger(state.step) || state.step < 0) {
    throw new FormatError(`loadCheckpoint: ${statePath} is not a trainer state of this library`);
  }
  const adapterBytes = await readRequired(dir, ADAPTER_WEIGHTS_NAME);
  const momentBytes = await readRequired(dir, OPTIMIZER_WEIGHTS_NAME);
  if (state.files !== undefined) {
    if (state.files === null || typeof state.files !== "object") {
      throw new FormatError(`loadCheckpoint: ${statePath} has a malformed "files" entry`);
    }
    const present: Record<string, Uint8Array> = {
      [ADAPTER_WEIGHTS_NAME]: adapterBytes,
      [OPTIMIZER_WEIGHTS_NAME]: momentBytes,
    };
    for (const [name, data] of Object.entries(present)) {
      if (state.files[name] !== undefined && state.files[name] !== await sha256(data)) {
        throw new FormatError(
          `loadCheckpoint: ${
            joinPath(dir, name)
          } is not the file ${TRAINER_STATE_NAME} was saved with (a save ` +
            `that failed midway, or an edit, mixed files of two checkpoints); resume from another checkpoint`,
        );
      }
    }
  }
  const adapter = readSafetensors(adapterBytes).tensors;
  const moments = readSafetensors(momentBytes).tensors;
  const weights: Record<string, { shape: number[]; data: Float32Array | Float64Array }> = {};
  const optState: Record<number, { step: number; exp_avg: Moment; exp_avg_sq: Moment }> = {};
  names.forEach((n, i) => {
    const w = adapter.get(PEFT_PREFIX + n);
    if (w === undefined) {
      throw new ConfigError(
        `loadCheckpoint: the optimizer trains ${n}, but the checkpoint's adapter has no ${PEFT_PREFIX}${n}`,
      );
    }
    weights[n] = { shape: w.shape, data: w.data as Float32Array };
    const step = state.optimizer.steps[n];
    if (step === undefined) return;
    const m = moments.get(`${n}.exp_avg`), v = moments.get(`${n}.exp_avg_sq`);
    if (m === undefined || v === undefined) {
      throw new FormatError(`loadCheckpoint: ${OPTIMIZER_WEIGHTS_NAME} lacks the moments of ${n}`);
    }
    optState[i] = {
      step,
      exp_avg: { shape: m.shape, data: m.data as Float32Array },
      exp_avg_sq: { shape: v.shape, data: v.data as Float32Array },
    };
  });
  const extra = [...adapter.keys()].filter((k) => !names.includes(k.slice(PEFT_PREFIX.length)));
  if (extra.length > 0) {
    throw new ConfigError(
      `loadCheckpoint: the checkpoint's adapter has weights the optimizer does not train: ${
        extra.slice(0, 4).join(", ")
      }`,
    );
  }
  const { lr, betas, eps, weight_decay } = state.optimizer;
  optimizer.loadStateDict({ state: optState, param_groups: [{ lr, betas, eps, weight_decay }] });
  model.loadStateDict(weights, { strict: false });
  if (args.scheduler) {
    if (state.scheduler === null) {
      throw new FormatError(`loadCheckpoint: the checkpoint has no scheduler state`);
    }
    args.scheduler.loadStateDict(state.scheduler);
  }
  return state;
}

type Moment = { shape: number[]; data: Float32Array };
