/**
 * The demo itself: load a base model, score it on held-out data, LoRA-fine-tune it with a live
 * progress line, score it again, save the adapter in PEFT's format (plus optimizer state for
 * `--resume`), reload it into a fresh copy of the base model, check merged and unmerged outputs agree,
 * and print a few generations. Everything goes through the library's public API.
 * @module
 */
import { fileURLToPath } from "node:url";
import { relative } from "node:path";
import {
  AdamW,
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  collateCompletions,
  cpuDevice,
  defaultDevice,
  type Device,
  type LlamaForCausalLM,
  loadAdapter,
  LoraError,
  manualSeed,
  mergeAndUnload,
  noGrad,
  PeftConfig,
  saveAdapter,
  saveCheckpoint,
  type Tensor,
  tidy,
  train,
  type TrainBatch,
  WarmupCosineSchedule,
  webgpuDevice,
} from "../../mod.ts";
import { checkSequenceLength, type DemoOptions, UsageError } from "./cli.ts";
import {
  completionIds,
  consecutiveWindows,
  type EncodedSequence,
  encodePair,
  padBatch,
  promptIds,
  randomWindow,
  readDataFile,
  splitHeldOut,
} from "./data.ts";
import { exactMatchOn, generateContinuations, meanTokenLoss } from "./evaluate.ts";
import { isDirectory, isFile, joinPath } from "./files.ts";
import { SeededRandom, streamFor } from "./rng.ts";
import { heldOutExamples, heldOutPoolSize, isExactMatch, TASK_A, TASK_B, trainingExamples } from "./tasks.ts";
import { loadTokenizer, type TextTokenizer } from "./tokenizer.ts";

/** The base model shipped with the demo (trained by scripts/pretrain.ts on task A). */
export const SHIPPED_MODEL_DIR: string = fileURLToPath(new URL("./base-model", import.meta.url));

/** Where the demo's output goes. */
export interface DemoIO {
  /** Prints one line. */
  log(line: string): void;
  /** Writes text as is (progress redraws). */
  write(text: string): void;
  /** Whether the output is a terminal (progress redrawn in place) or a log (plain lines). */
  tty: boolean;
}

/** What a run measured (the demo prints all of it; tests check it). */
export interface DemoResult {
  device: string;
  /** Exact-match accuracy on held-out prompts (prompt/completion data only; else null). */
  accuracyBefore: number | null;
  accuracyAfter: number | null;
  /** Mean held-out token loss. */
  lossBefore: number;
  lossAfter: number;
  /** Steps completed in total (a resumed run counts the earlier ones). */
  step: number;
  trainSeconds: number;
  /** Logits of the reloaded adapter vs the trained model. */
  reloadRelErr: number;
  /** Logits after mergeAndUnload vs the unmerged reloaded adapter. */
  mergeRelErr: number;
  outDir: string;
}

/** Relative errors above this mean the save/reload/merge path is broken, not rounding. */
const AGREEMENT_LIMIT = 1e-4;

/** Held-out sequences shown as generations at the end. */
const SHOWN_GENERATIONS = 5;

/** The training data and held-out set of a run. */
interface Plan {
  /** One line for the output. */
  description: string;
  /** true: prompt/completion pairs (scored by exact match); false: plain text (scored by loss). */
  pairs: boolean;
  batchAt(step: number): TrainBatch;
  heldOut: EncodedSequence[];
}

async function pickDevice(choice: DemoOptions["device"]): Promise<{ device: Device; note: string }> {
  if (choice === "cpu") return { device: cpuDevice(), note: "(--device cpu)" };
  if (choice === "webgpu") return { device: await webgpuDevice(), note: "(--device webgpu)" };
  const device = await defaultDevice();
  const note = device.kind === "cpu"
    ? "(no hardware GPU found; --device webgpu also takes a software adapter)"
    : "(hardware GPU; --device cpu for the CPU reference)";
  return { device, note };
}

/** Shows a path relative to the working directory when that is shorter. */
function displayPath(path: string): string {
  const rel = relative(Deno.cwd(), path);
  return rel !== "" && rel.length < path.length ? rel : path;
}

/** "1 layer", "2 layers". */
function count(n: number, noun: string): string {
  return `${n.toLocaleString("en-US")} ${noun}${n === 1 ? "" : "s"}`;
}

function percent(x: number): string {
  return `${(x * 100).toFixed(1)}%`;
}

function taskPlan(opts: DemoOptions, tokenizer: TextTokenizer): Plan {
  const pool = heldOutPoolSize(TASK_B);
  if (opts.evalCount > pool) {
    throw new UsageError(`--eval ${opts.evalCount}: task B has ${pool} held-out prompts`);
  }
  return {
    description: `task B, add ${TASK_B.shift} to every digit ("3917+${TASK_B.shift}=5139"); the base model ` +
      `was pretrained on task A, add ${TASK_A.shift} ("3917+${TASK_A.shift}=4028")`,
    pairs: true,
    batchAt: (step) =>
      collateCompletions(tokenizer, trainingExamples(TASK_B, opts.batch, streamFor(opts.seed, step))),
    heldOut: heldOutExamples(TASK_B, opts.evalCount, opts.seed).map((p) => encodePair(tokenizer, p)),
  };
}

async function filePlan(path: string, opts: DemoOptions, tokenizer: TextTokenizer): Promise<Plan> {
  const file = await readDataFile(path);
  const split = new SeededRandom(opts.seed);
  const sampleBatch = (train: EncodedSequence[]) => (step: number) => {
    const rng = streamFor(opts.seed, step);
    return padBatch(
      Array.from({ length: opts.batch }, () => train[rng.int(train.length)]),
      tokenizer.padTokenId,
    );
  };
  if (file.kind === "pairs") {
    const { train, heldOut } = splitHeldOut(file.pairs, opts.evalCount, split);
    return {
      description: `${displayPath(path)}: ${train.length} prompt/completion pairs to train on, ` +
        `${heldOut.length} held out (loss on completions only)`,
      pairs: true,
      batchAt: sampleBatch(train.map((p) => encodePair(tokenizer, p))),
      heldOut: heldOut.map((p) => encodePair(tokenizer, p)),
    };
  }
  const ids = tokenizer.encode(file.text);
  if (ids.length < 20) {
    throw new UsageError(`--data ${path}: only ${ids.length} tokens of text; need at least 20`);
  }
  // The last tenth of the text is held out, so no held-out token was trained on.
  const cut = Math.floor(ids.length * 0.9);
  const trainIds = ids.slice(0, cut);
  const heldOut = consecutiveWindows(ids.slice(cut), opts.seqLen, opts.evalCount);
  return {
    description: `${displayPath(path)}: plain text, ${ids.length} tokens (windows of ${opts.seqLen}; ` +
      `last 10% held out)`,
    pairs: false,
    batchAt: (step) => {
      const rng = streamFor(opts.seed, step);
      const rows = Array.from({ length: opts.batch }, () => randomWindow(trainIds, opts.seqLen, rng));
      return padBatch(rows, tokenizer.padTokenId);
    },
    heldOut,
  };
}

/** Logits of `model` on `batch` as host numbers. */
async function logitsOf(model: LlamaForCausalLM, batch: TrainBatch): Promise<Float32Array> {
  const logits: Tensor = tidy(() =>
    noGrad(() => model.forward(batch.inputIds, { attentionMask: batch.attentionMask }).logits)
  );
  const data = await logits.data() as Float32Array;
  logits.dispose();
  return data;
}

/** ||a − b|| / ||b|| over the whole array. */
function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** Unique trainable parameters and the total parameter count. */
function parameterCounts(
  model: LlamaForCausalLM,
): { trainable: Tensor[]; total: number; trainableSize: number } {
  const all = [...new Set(model.parameters())];
  const trainable = all.filter((p) => p.requiresGrad);
  return {
    trainable,
    total: all.reduce((n, p) => n + p.size, 0),
    trainableSize: trainable.reduce((n, p) => n + p.size, 0),
  };
}

/** The step a checkpoint directory written by this demo reached. */
async function checkpointStep(dir: string): Promise<number> {
  const statePath = joinPath(dir, "trainer_state.json");
  if (!(await isDirectory(dir)) || !(await isFile(statePath))) {
    throw new UsageError(`--resume ${dir}: not a directory written by this demo (no trainer_state.json)`);
  }
  try {
    const step = JSON.parse(await Deno.readTextFile(statePath)).step;
    if (Number.isInteger(step) && step >= 0) return step;
  } catch { /* reported below */ }
  throw new UsageError(`--resume ${dir}: trainer_state.json is malformed`);
}

/** fromPretrained's option for --quantize. */
function quantizeOption(q: DemoOptions["quantize"]): { quantize?: { scheme: "nf4" | "int8" } } {
  return q === "none" ? {} : { quantize: { scheme: q } };
}

/** The checkpoint and its tokenizer; what is wrong with them is reported against the directory. */
async function loadBase(
  dir: string,
  device: Device,
  quantize: DemoOptions["quantize"] = "none",
): Promise<{ model: LlamaForCausalLM; tokenizer: TextTokenizer }> {
  try {
    const model = await AutoModelForCausalLM.fromPretrained(dir, { device, ...quantizeOption(quantize) });
    return { model, tokenizer: await loadTokenizer(dir, model.config) };
  } catch (e) {
    if (e instanceof LoraError) throw new UsageError(`--base ${displayPath(dir)}: ${e.message}`);
    throw e;
  }
}

/** Runs the demo with `opts`, printing through `io`. */
export async function runDemo(opts: DemoOptions, io: DemoIO): Promise<DemoResult> {
  const started = performance.now();
  if (opts.data !== null && !(await isFile(opts.data))) {
    throw new UsageError(`--data ${opts.data}: no such file`);
  }
  const resumeStep = opts.resume === null ? 0 : await checkpointStep(opts.resume);
  const baseDir = opts.base ?? SHIPPED_MODEL_DIR;
  if (!(await isDirectory(baseDir))) {
    throw new UsageError(
      opts.base === null
        ? `the shipped model ${displayPath(baseDir)} is missing; run deno run -A scripts/pretrain.ts`
        : `--base ${baseDir}: no such directory`,
    );
  }

  const { device, note } = await pickDevice(opts.device);
  io.log(`device: ${device} ${note}`);
  const { model, tokenizer } = await loadBase(baseDir, device, opts.quantize);
  const c = model.config;
  checkSequenceLength(opts.seqLen, c.maxPositionEmbeddings);
  io.log(
    `base model: ${displayPath(baseDir)} (${count(c.numHiddenLayers, "layer")}, hidden ${c.hiddenSize}, ` +
      `${count(c.numAttentionHeads, "head")}, ${count(parameterCounts(model).total, "parameter")}); ` +
      tokenizer.description,
  );
  const plan = opts.data === null ? taskPlan(opts, tokenizer) : await filePlan(opts.data, opts, tokenizer);
  io.log(`data: ${plan.description}`);

  const before = plan.pairs ? await exactMatchOn(model, plan.heldOut, tokenizer.eosTokenId) : null;
  const lossBefore = await meanTokenLoss(model, plan.heldOut, tokenizer.padTokenId);
  if (before !== null) {
    io.log(
      `accuracy before fine-tuning: ${percent(before.accuracy)} (${
        count(plan.heldOut.length, "held-out prompt")
      })`,
    );
  }
  io.log(`held-out loss before fine-tuning: ${lossBefore.toFixed(4)}`);

  manualSeed(opts.seed);
  if (opts.resume !== null) {
    const names = await loadAdapter(model, opts.resume);
    io.log(
      `resuming ${displayPath(opts.resume)} at step ${resumeStep}: ${names.length} adapted modules ` +
        `(rank, alpha and targets from its adapter_config.json, matched by PEFT's rules)`,
    );
  } else {
    const n = applyLoraToLinearModules(
      model,
      new PeftConfig({ targetModules: opts.targets, dim: opts.rank, alpha: opts.alpha }),
    );
    io.log(
      `LoRA: rank ${opts.rank}, alpha ${opts.alpha}, on ${count(n, "module")} matching ${
        opts.targets.join(", ")
      } (the seed's rule: * wildcards over whole dotted names)`,
    );
  }
  const counts = parameterCounts(model);
  io.log(
    `training ${counts.trainableSize.toLocaleString("en-US")} of ${counts.total.toLocaleString("en-US")} ` +
      `parameters (${
        percent(counts.trainableSize / counts.total)
      }) for ${opts.steps} steps of ${opts.batch} ` +
      `sequences, AdamW lr ${opts.lr}`,
  );

  const totalSteps = resumeStep + opts.steps;
  const optimizer = new AdamW(counts.trainable, { lr: opts.lr, weightDecay: 0 });
  const scheduler = new WarmupCosineSchedule(optimizer, {
    warmupSteps: Math.min(10, Math.floor(totalSteps / 10)),
    totalSteps,
    minRatio: 0.1,
  });
  // Each loss read waits for the device; reading every few steps keeps a GPU busy in between.
  const logEvery = Math.max(1, Math.min(10, Math.round(opts.steps / 30)));
  const trainStart = performance.now();
  const result = await train({
    model,
    optimizer,
    scheduler,
    batches: plan.batchAt,
    steps: totalSteps,
    logEvery,
    clipNorm: 1,
    // The library's progress line, drawn where the demo prints (a terminal: redrawn in place).
    progress: { write: io.write, tty: io.tty, every: Math.max(logEvery, Math.round(opts.steps / 10)) },
    ...(opts.resume === null ? {} : { resumeFrom: opts.resume }),
  });
  const trainSeconds = (performance.now() - trainStart) / 1000;
  io.log(`trained ${opts.steps} steps in ${trainSeconds.toFixed(1)} s`);

  const after = plan.pairs ? await exactMatchOn(model, plan.heldOut, tokenizer.eosTokenId) : null;
  const lossAfter = await meanTokenLoss(model, plan.heldOut, tokenizer.padTokenId);
  io.log(`held-out loss after fine-tuning: ${lossAfter.toFixed(4)}`);
  if (after !== null) io.log(`accuracy after fine-tuning: ${percent(after.accuracy)}`);

  await saveCheckpoint(opts.out, { model, optimizer, step: result.step, scheduler, losses: result.losses });
  // Rewritten with the base model's path recorded, which PEFT reads to find the base model.
  await saveAdapter(model, opts.out, { baseModelNameOrPath: displayPath(baseDir) });
  io.log(
    `saved to ${displayPath(opts.out)}/: adapter_model.safetensors + adapter_config.json (PEFT), ` +
      `optimizer.safetensors + trainer_state.json (for --resume)`,
  );

  const probe = padBatch(plan.heldOut.slice(0, 8), tokenizer.padTokenId);
  const trained = await logitsOf(model, probe);
  const fresh = await AutoModelForCausalLM.fromPretrained(baseDir, {
    device,
    ...quantizeOption(opts.quantize),
  });
  await loadAdapter(fresh, opts.out, { trainable: false });
  const unmerged = await logitsOf(fresh, probe);
  await mergeAndUnload(fresh);
  const merged = await logitsOf(fresh, probe);
  const reloadRelErr = relativeError(unmerged, trained);
  const mergeRelErr = relativeError(merged, unmerged);
  io.log(
    `reloaded into a fresh base model: logits vs the trained model, relative error ` +
      `${reloadRelErr.toExponential(1)}; merged (mergeAndUnload) vs unmerged ${mergeRelErr.toExponential(1)}`,
  );
  if (!(reloadRelErr <= AGREEMENT_LIMIT && mergeRelErr <= AGREEMENT_LIMIT)) {
    throw new Error(`demo: saved, reloaded and merged adapters disagree beyond ${AGREEMENT_LIMIT}`);
  }

  await showGenerations(fresh, plan, tokenizer, before?.continuations ?? null, io);
  io.log(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return {
    device: String(device),
    accuracyBefore: before?.accuracy ?? null,
    accuracyAfter: after?.accuracy ?? null,
    lossBefore,
    lossAfter,
    step: result.step,
    trainSeconds,
    reloadRelErr,
    mergeRelErr,
    outDir: opts.out,
  };
}

/** Text of ids up to (not including) the first EOS. */
function textBeforeEos(tokenizer: TextTokenizer, ids: readonly number[]): string {
  const eos = tokenizer.eosTokenId;
  const end = eos === null ? -1 : ids.indexOf(eos);
  return tokenizer.decode(end < 0 ? ids : ids.slice(0, end));
}

/** Prints a few held-out generations of the merged model (with the base model's answer for pairs). */
async function showGenerations(
  model: LlamaForCausalLM,
  plan: Plan,
  tokenizer: TextTokenizer,
  baseContinuations: number[][] | null,
  io: DemoIO,
): Promise<void> {
  const shown = plan.heldOut.slice(0, SHOWN_GENERATIONS);
  const eos = tokenizer.eosTokenId;
  if (plan.pairs) {
    const prompts = shown.map(promptIds);
    const maxNew = Math.max(...shown.map((s) => completionIds(s).length));
    const outs = await generateContinuations(model, prompts, maxNew, eos);
    io.log("generations of the merged model on held-out prompts (base model's answer in brackets):");
    shown.forEach((s, i) => {
      const mark = isExactMatch(outs[i], completionIds(s), eos) ? "✓" : "✗";
      const base = baseContinuations === null
        ? ""
        : `  [${JSON.stringify(textBeforeEos(tokenizer, baseContinuations[i]))}]`;
      io.log(
        `  ${JSON.stringify(tokenizer.decode(prompts[i]))} → ${
          JSON.stringify(textBeforeEos(tokenizer, outs[i]))
        } ` +
          `${mark}${base}`,
      );
    });
    return;
  }
  const prompts = shown.map((s) => s.ids.slice(0, Math.min(8, s.ids.length - 1)));
  const outs = await generateContinuations(model, prompts, 32, eos);
  io.log("generations of the merged model from held-out text:");
  prompts.forEach((p, i) => {
    io.log(`  ${JSON.stringify(tokenizer.decode(p))} → ${JSON.stringify(tokenizer.decode(outs[i]))}`);
  });
}
