/**
 * The browser example's page module (examples/browser/index.html loads it): LoRA-fine-tunes the demo's
 * shipped base model (examples/demo/base-model, pretrained on task A, "3917+1=4028") to task B
 * ("3917+2=5139") on WebGPU, or on the CPU where the browser has no WebGPU, with a progress bar and a live
 * loss curve; scores held-out prompts before and after; offers the PEFT adapter for download
 * (`adapterToFilesAsync`); and loads a PEFT adapter picked from disk onto a fresh base and generates.
 *
 * It imports the library from `../../mod.ts`; examples/browser/serve.ts bundles this module with that
 * import left to the page's import map, which points it at the npm package's browser bundle, so the page
 * uses the library exactly as a user of the package would. The demo's task, tokenizer and scoring code
 * is shared with the command-line demo rather than copied.
 *
 * What it measured is kept on `globalThis.loraExample` (and `document.body.dataset.state` says which
 * stage it is in), for the CI test that drives this page in headless Chromium.
 * @module
 */
import {
  AdamW,
  adapterToFilesAsync,
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  collateCompletions,
  cpuDevice,
  type Device,
  type LlamaForCausalLM,
  loadAdapter,
  manualSeed,
  noGrad,
  PeftConfig,
  type Tensor,
  tidy,
  train,
  type TrainProgress,
  WarmupCosineSchedule,
  webgpuDevice,
} from "../../mod.ts";
import { encodePair, padBatch, promptIds } from "../demo/data.ts";
import { exactMatchOn } from "../demo/evaluate.ts";
import { streamFor } from "../demo/rng.ts";
import { heldOutExamples, TASK_B, trainingExamples } from "../demo/tasks.ts";
import { ByteTokenizer } from "../demo/tokenizer.ts";

/** The demo's end-of-answer byte ("\n"), the shipped model's eos_token_id. */
const EOS = 10;
/** Held-out prompts whose logits the page reports (the test compares them with the CPU's). */
const PROBE_ROWS = 8;

/** What the page measured, for the CI test (and anyone curious, in the console). */
export interface ExampleReport {
  /** Where fine-tuning ran. */
  device?: string;
  /** Where the adapter picked from disk generated. */
  generatedOn?: string;
  /** Set once fine-tuning finished. */
  trained?: {
    steps: number;
    batch: number;
    seconds: number;
    stepsPerSecond: number;
    tokensPerSecond: number;
    accuracyBefore: number;
    accuracyAfter: number;
    heldOut: number;
    losses: number[];
    /** Seconds since training started at each step's end (the first steps include compiling kernels). */
    stepSeconds: number[];
    /** Token ids of the probe rows (right-padded) and their attention mask. */
    probeIds: number[][];
    probeMask: number[][];
    /** Logits of the trained model on the probe rows, flattened. */
    probeLogits: number[];
  };
  /** Set once an adapter from disk generated. */
  generated?: {
    adapterModules: string[];
    prompt: string;
    promptIds: number[];
    text: string;
    tokens: number[];
    /** Logits of the prompt's forward pass under the loaded adapter, flattened. */
    logits: number[];
  };
  error?: string;
}

const report: ExampleReport = {};
(globalThis as unknown as { loraExample: ExampleReport }).loraExample = report;

const tokenizer = new ByteTokenizer(EOS);
const params = new URLSearchParams(location.search);

function $<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (el === null) throw new Error(`the page has no #${id}`);
  return el as T;
}

function setState(state: string): void {
  document.body.dataset.state = state;
}

function log(line: string): void {
  const out = $<HTMLPreElement>("log");
  out.textContent += line + "\n";
  out.scrollTop = out.scrollHeight;
}

function fail(e: unknown): void {
  const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  report.error = message;
  log(`error: ${message}`);
  setState("error");
  console.error(e);
}

/** Query parameters override the form's defaults (the test passes a short run this way). */
for (const name of ["steps", "batch", "eval", "device"]) {
  const value = params.get(name);
  if (value !== null) $<HTMLInputElement>(name).value = value;
}

const devices = new Map<string, Promise<Device>>();

/**
 * The device the form names, opened once per choice: WebGPU where the browser has it (a software adapter
 * included), else (for "auto") the CPU reference.
 */
function device(): Promise<Device> {
  const choice = $<HTMLSelectElement>("device").value;
  let opened = devices.get(choice);
  if (opened === undefined) {
    opened = (async () => {
      if (choice === "cpu") return cpuDevice();
      try {
        return await webgpuDevice();
      } catch (e) {
        if (choice === "webgpu") throw e;
        log(`WebGPU unavailable (${(e as Error).message}); using the CPU`);
        return cpuDevice();
      }
    })();
    devices.set(choice, opened);
  }
  return opened;
}

/** The shipped base model, fetched next to the page and loaded onto `dev`. */
async function loadBase(dev: Device): Promise<LlamaForCausalLM> {
  const [config, weights] = await Promise.all([
    fetch("base-model/config.json").then((r) => r.text()),
    fetch("base-model/model.safetensors").then(async (r) => new Uint8Array(await r.arrayBuffer())),
  ]);
  return await AutoModelForCausalLM.fromPretrained({ config, weights }, { device: dev }) as LlamaForCausalLM;
}

/** Logits of `model` for right-padded rows, flattened on the host. */
async function logitsOf(model: LlamaForCausalLM, ids: number[][], mask: number[][]): Promise<number[]> {
  model.eval();
  const logits: Tensor = tidy(() => noGrad(() => model.forward(ids, { attentionMask: mask }).logits));
  const data = await logits.data();
  logits.dispose();
  return Array.from(data);
}

/** The loss curve: every step's loss on a log scale, redrawn at each report. */
function drawLossCurve(losses: readonly number[], totalSteps: number): void {
  const canvas = $<HTMLCanvasElement>("loss");
  const ctx = canvas.getContext("2d")!;
  const { width, height } = canvas;
  const pad = { left: 44, right: 10, top: 10, bottom: 22 };
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#555";
  ctx.strokeStyle = "#ddd";
  const lo = Math.log10(Math.max(1e-3, Math.min(...losses, 1)));
  const hi = Math.log10(Math.max(...losses, 10));
  const x = (step: number) => pad.left + (step / Math.max(1, totalSteps)) * (width - pad.left - pad.right);
  const y = (loss: number) =>
    pad.top + (hi - Math.log10(Math.max(loss, 1e-3))) / (hi - lo || 1) * (height - pad.top - pad.bottom);
  for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(10 ** e));
    ctx.lineTo(width - pad.right, y(10 ** e));
    ctx.stroke();
    ctx.fillText(String(10 ** e), 4, y(10 ** e) + 4);
  }
  ctx.fillText(`step ${losses.length} / ${totalSteps}`, width - 90, height - 6);
  ctx.strokeStyle = "#c2410c";
  ctx.lineWidth = 2;
  ctx.beginPath();
  losses.forEach((loss, i) => i === 0 ? ctx.moveTo(x(i + 1), y(loss)) : ctx.lineTo(x(i + 1), y(loss)));
  ctx.stroke();
  ctx.lineWidth = 1;
}

/** A download link for one adapter file. */
function downloadLink(name: string, body: string | Uint8Array, type: string): HTMLAnchorElement {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([body as BlobPart], { type }));
  a.download = name;
  a.textContent = name;
  a.id = `download-${name.replace(/\W/g, "-")}`;
  return a;
}

async function fineTune(): Promise<void> {
  setState("training");
  $<HTMLButtonElement>("train").disabled = true;
  const steps = Number($<HTMLInputElement>("steps").value);
  const batch = Number($<HTMLInputElement>("batch").value);
  const evalCount = Number($<HTMLInputElement>("eval").value);
  const seed = 0;
  const dev = await device();
  report.device = String(dev);
  log(`fine-tuning on ${dev}`);
  let t = performance.now();
  const phase = (what: string) => {
    log(`${what}: ${((performance.now() - t) / 1000).toFixed(1)} s`);
    t = performance.now();
  };
  const model = await loadBase(dev);
  phase("loaded the base model");
  const heldOut = heldOutExamples(TASK_B, evalCount, seed).map((p) => encodePair(tokenizer, p));
  const before = await exactMatchOn(model, heldOut, EOS);
  phase(`accuracy on ${heldOut.length} held-out prompts before: ${(before.accuracy * 100).toFixed(1)}%`);

  // The demo's recipe (examples/demo/run.ts): rank 8, alpha 16 on every *_proj, AdamW, warmup + cosine.
  manualSeed(seed);
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*_proj"], dim: 8, alpha: 16 }));
  const optimizer = new AdamW(model.trainableParameters(), { lr: 0.01, weightDecay: 0 });
  const scheduler = new WarmupCosineSchedule(optimizer, {
    warmupSteps: Math.min(10, Math.floor(steps / 10)),
    totalSteps: steps,
    minRatio: 0.1,
  });
  const losses: number[] = [];
  const stepSeconds: number[] = [];
  const bar = $<HTMLProgressElement>("progress");
  bar.max = steps;
  let last: TrainProgress | null = null;
  const started = performance.now();
  await train({
    model,
    optimizer,
    scheduler,
    batches: (step) => collateCompletions(tokenizer, trainingExamples(TASK_B, batch, streamFor(seed, step))),
    steps,
    logEvery: 1,
    clipNorm: 1,
    onProgress: (p) => {
      last = p;
      stepSeconds.push(p.elapsedSeconds);
      losses.push(...p.losses);
      bar.value = p.step;
      $("progress-text").textContent = `step ${p.step}/${p.totalSteps} · loss ${p.loss.toFixed(4)} · ` +
        `${p.tokensPerSecond.toFixed(0)} tokens/s`;
      drawLossCurve(losses, steps);
    },
  });
  // Let the last redraw reach the screen before scoring takes the thread.
  await new Promise((r) => requestAnimationFrame(r));
  const seconds = (performance.now() - started) / 1000;
  log(
    `fine-tuned ${steps} steps of ${batch} in ${seconds.toFixed(1)} s (${
      (steps / seconds).toFixed(2)
    } steps/s)`,
  );
  const after = await exactMatchOn(model, heldOut, EOS);
  log(`accuracy after: ${(after.accuracy * 100).toFixed(1)}%`);
  $("accuracy").textContent = `held-out accuracy ${(before.accuracy * 100).toFixed(0)}% → ` +
    `${(after.accuracy * 100).toFixed(0)}%`;

  const probe = padBatch(heldOut.slice(0, PROBE_ROWS), tokenizer.padTokenId);
  const probeIds = probe.inputIds as number[][];
  const probeMask = probe.attentionMask as number[][];
  const probeLogits = await logitsOf(model, probeIds, probeMask);

  const files = await adapterToFilesAsync(model, { baseModelNameOrPath: "examples/demo/base-model" });
  const links = $("downloads");
  links.replaceChildren(
    downloadLink("adapter_config.json", files["adapter_config.json"], "application/json"),
    document.createTextNode(" "),
    downloadLink("adapter_model.safetensors", files["adapter_model.safetensors"], "application/octet-stream"),
  );
  report.trained = {
    steps,
    batch,
    seconds,
    stepsPerSecond: steps / seconds,
    tokensPerSecond: (last as TrainProgress | null)?.tokensPerSecond ?? NaN,
    accuracyBefore: before.accuracy,
    accuracyAfter: after.accuracy,
    heldOut: heldOut.length,
    losses,
    stepSeconds,
    probeIds,
    probeMask,
    probeLogits,
  };
  setState("trained");
}

async function generateWithPickedAdapter(): Promise<void> {
  setState("generating");
  const picked = [...($<HTMLInputElement>("adapter-files").files ?? [])];
  const config = picked.find((f) => f.name.endsWith(".json"));
  const weights = picked.find((f) => f.name.endsWith(".safetensors"));
  if (config === undefined || weights === undefined) {
    throw new Error("pick both adapter_config.json and adapter_model.safetensors");
  }
  const dev = await device();
  report.generatedOn = String(dev);
  const model = await loadBase(dev);
  const adapterModules = await loadAdapter(model, {
    "adapter_config.json": await config.text(),
    "adapter_model.safetensors": new Uint8Array(await weights.arrayBuffer()),
  }, { trainable: false });
  log(`loaded ${weights.name} onto the base model on ${dev}: ${adapterModules.length} adapted modules`);
  const prompt = $<HTMLInputElement>("prompt").value;
  const ids = tokenizer.encode(prompt);
  model.eval();
  const [row] = await model.generate([ids], { maxNewTokens: 8, eosTokenId: EOS });
  const tokens = row.slice(ids.length);
  const end = tokens.indexOf(EOS);
  const text = tokenizer.decode(end < 0 ? tokens : tokens.slice(0, end));
  $("generation").textContent = `${prompt}${text}`;
  log(`generated: ${JSON.stringify(prompt)} → ${JSON.stringify(text)}`);
  const logits = await logitsOf(model, [ids], [ids.map(() => 1)]);
  report.generated = { adapterModules, prompt, promptIds: ids, text, tokens, logits };
  setState("generated");
}

$("train").addEventListener("click", () => fineTune().catch(fail));
$("generate").addEventListener("click", () => generateWithPickedAdapter().catch(fail));
// promptIds is the demo's own split of an encoded pair; shown here so the default prompt is a held-out one.
$<HTMLInputElement>("prompt").value = tokenizer.decode(
  promptIds(encodePair(tokenizer, heldOutExamples(TASK_B, 1, 1)[0])),
);
setState("ready");
