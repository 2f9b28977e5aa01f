/**
 * Pretrains the demo's base model from scratch on task A (add 1 to every digit, "3917+1=4028\n") with
 * this library: a tiny Llama over UTF-8 bytes, AdamW with warmup + cosine decay, the training loop with
 * progress output. Writes `config.json` + `model.safetensors` in transformers' format (each file lands
 * atomically) and reports time, final loss and held-out accuracy on tasks A and B.
 *
 *   deno run -A scripts/pretrain.ts [--device auto|cpu|webgpu] [--out examples/demo/base-model]
 * @module
 */
import {
  AdamW,
  cpuDevice,
  defaultDevice,
  llamaConfig,
  LlamaForCausalLM,
  LoraError,
  saveModel,
  train,
  WarmupCosineSchedule,
  webgpuDevice,
} from "../mod.ts";
import {
  DEVICE_CHOICES,
  DEVICE_HELP,
  type FlagSpec,
  helpText,
  parseFlags,
  UsageError,
} from "../examples/demo/cli.ts";
import { encodePair } from "../examples/demo/data.ts";
import { exactMatchOn } from "../examples/demo/evaluate.ts";
import { ProgressLine } from "../src/train/progress.ts";
import { streamFor } from "../examples/demo/rng.ts";
import {
  type DigitShiftTask,
  END_OF_ANSWER,
  heldOutExamples,
  TASK_A,
  TASK_B,
  trainingExamples,
} from "../examples/demo/tasks.ts";
import { ByteTokenizer } from "../examples/demo/tokenizer.ts";

const FLAGS: readonly FlagSpec[] = [
  {
    name: "device",
    kind: "string",
    metavar: "auto|cpu|webgpu",
    help: DEVICE_HELP,
    choices: DEVICE_CHOICES,
    default: "auto",
  },
  {
    name: "out",
    kind: "string",
    metavar: "DIR",
    help: "output directory",
    default: "examples/demo/base-model",
  },
  { name: "steps", kind: "int", metavar: "N", help: "training steps", default: "800" },
  { name: "batch", kind: "int", metavar: "N", help: "sequences per step", default: "32" },
  { name: "lr", kind: "number", metavar: "LR", help: "peak learning rate", default: "0.003" },
  { name: "hidden", kind: "int", metavar: "N", help: "hidden size (a multiple of 2 · heads)", default: "64" },
  { name: "layers", kind: "int", metavar: "N", help: "decoder layers", default: "2" },
  { name: "heads", kind: "int", metavar: "N", help: "attention heads", default: "4" },
  { name: "seed", kind: "int", metavar: "N", help: "seed of the init and the data", min: 0, default: "0" },
];

const DESCRIPTION =
  "Trains the demo's base model from scratch on task A (add 1 to every digit) and saves it\n" +
  "in transformers' format (config.json + model.safetensors).";

/** The byte whose token ends every answer. */
const EOS = END_OF_ANSWER.charCodeAt(0);

async function accuracy(
  model: LlamaForCausalLM,
  task: DigitShiftTask,
  tokenizer: ByteTokenizer,
): Promise<number> {
  const held = heldOutExamples(task, 500, 7).map((p) => encodePair(tokenizer, p));
  return (await exactMatchOn(model, held, EOS)).accuracy;
}

async function main(argv: string[]): Promise<void> {
  const { help, values } = parseFlags(argv, FLAGS);
  if (help) {
    console.log(helpText("deno run -A scripts/pretrain.ts [options]", DESCRIPTION, FLAGS));
    return;
  }
  const v = values as Record<string, number> & Record<"device" | "out", string>;
  if (v.hidden % (2 * v.heads) !== 0) {
    throw new UsageError(`--hidden ${v.hidden} must be a multiple of 2 · --heads (${2 * v.heads})`);
  }
  const device = v.device === "cpu"
    ? cpuDevice()
    : v.device === "webgpu"
    ? await webgpuDevice()
    : await defaultDevice();
  console.log(`device: ${device}`);
  const config = llamaConfig({
    vocabSize: 256,
    hiddenSize: v.hidden,
    intermediateSize: 2 * v.hidden,
    numHiddenLayers: v.layers,
    numAttentionHeads: v.heads,
    maxPositionEmbeddings: 64,
    eosTokenId: EOS,
  });
  const model = new LlamaForCausalLM(config, { device, seed: v.seed });
  const params = model.parameters();
  console.log(
    `model: ${v.layers} layers, hidden ${v.hidden}, ${v.heads} heads, ` +
      `${params.reduce((n, p) => n + p.size, 0).toLocaleString("en-US")} parameters; task A: "3917+1=4028"`,
  );
  const tokenizer = new ByteTokenizer(EOS);
  const optimizer = new AdamW(params, { lr: v.lr, weightDecay: 0 });
  const scheduler = new WarmupCosineSchedule(optimizer, {
    warmupSteps: Math.min(50, Math.floor(v.steps / 10)),
    totalSteps: v.steps,
    minRatio: 0.1,
  });
  const progress = new ProgressLine({
    write: (t) => Deno.stdout.writeSync(new TextEncoder().encode(t)),
    tty: Deno.stdout.isTerminal(),
    every: Math.max(10, Math.round(v.steps / 20)),
  });
  const started = performance.now();
  // Plain language modelling over whole lines: the model learns the format as well as the answers.
  const result = await train({
    model,
    optimizer,
    scheduler,
    steps: v.steps,
    logEvery: 10,
    clipNorm: 1,
    batches: (step) => ({
      inputIds: trainingExamples(TASK_A, v.batch, streamFor(v.seed, step)).map((p) =>
        tokenizer.encode(p.prompt + p.completion)
      ),
    }),
    onProgress: (p) => progress.update(p),
  });
  progress.finish();
  const seconds = (performance.now() - started) / 1000;
  const tail = result.losses.slice(-50);
  const finalLoss = tail.reduce((a, b) => a + b, 0) / tail.length;
  // The prompt's digits after the first are random: no model predicts them, which bounds the loss below.
  const tokens = TASK_A.digits * 2 + 4;
  const floor = ((TASK_A.digits - 1) * Math.log(10)) / (tokens - 1);
  console.log(
    `pretraining took ${seconds.toFixed(1)} s on ${device}; final loss ${
      finalLoss.toFixed(4)
    } (mean of the ` +
      `last ${tail.length} steps; the random prompt digits put the floor at ${floor.toFixed(4)})`,
  );
  console.log(
    `held-out exact match: task A ${(100 * await accuracy(model, TASK_A, tokenizer)).toFixed(1)}%, task B ${
      (100 * await accuracy(model, TASK_B, tokenizer)).toFixed(1)
    }%`,
  );
  await saveModel(model, v.out);
  console.log(`saved ${v.out}/config.json and ${v.out}/model.safetensors`);
}

try {
  await main(Deno.args);
} catch (e) {
  if (e instanceof UsageError || e instanceof LoraError) {
    console.error(`pretrain: ${e.message}`);
    Deno.exit(2);
  }
  throw e;
}
