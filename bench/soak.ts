/**
 * Soak and fault run (issue 24): many LoRA training steps through `train()` with checkpoints, device memory
 * recorded at every step, a device lost mid-run and resumed from its last checkpoint, and a batch too large
 * for the device's memory budget. One script, progress lines on standard error, one JSON summary on stdout.
 *
 * Three parts, on the same data (token ids from a counter hash of the step, so every run sees the same
 * batches) and the same LoRA initialisation (manualSeed before the adapters are made):
 * 1. Reference: `--steps` steps (default 1,000) from the base weights with checkpoints every
 *    `--checkpoint-every` steps (losses are read back at those reports only: no per-step wait on the GPU).
 *    `device.memory()` is sampled at the start of every step (train() asks for each step's batch through
 *    the `batches` function, which is where the sample is taken; counting live bytes waits on nothing):
 *    live bytes, and the peak since the previous sample (the peak is restarted after each sample). After
 *    `--warmup` steps both must stay flat: the drift (max - min) at most `--max-drift` bytes.
 * 2. Fault: on a fresh device, the same run again, with the device destroyed after step `--lose-at` (the
 *    GPUDevice itself on WebGPU, as a driver reset would; `Device.destroy()` on the CPU). train() then fails
 *    with a DeviceError; a new device and model resume from the last checkpoint (`resumeFrom`) and run to
 *    `--resume-to`. The resumed steps' losses must equal the reference's: exactly on the CPU, within
 *    `--tolerance` (default 1e-5) on WebGPU.
 * 3. Too large: before part 2 trains, on its device, a memory limit (setMemoryLimit) of 1.5x the reference
 *    step's peak, then a step of `--oversize` times the batch: it must be a DeviceError naming the bytes, with
 *    nothing allocated (live and peak bytes unchanged: every kernel allocates its output first), and part 2's
 *    steps then run on that same device under that limit and match the reference.
 *
 * Usage:
 *   deno run -A bench/soak.ts --ckpt /tmp/ckpt/smollm2-135m [--steps 1000] [--batch 1] [--seq 512]
 *       [--checkpoint-every 100] [--lose-at 250] [--resume-to 300] [--warmup 5] [--device webgpu|cpu]
 *       [--out DIR] [--json FILE] [--series 100] [--max-drift 1048576] [--tolerance 1e-5] [--oversize 16]
 *   deno run -A bench/soak.ts --tiny [--steps 30] [--device cpu|webgpu]   (a 2-layer SmolLM2-shaped model
 *       with random weights, 1 x 32 tokens: CI and local testing)
 * Exit code 0 when every check passed, 1 otherwise (the summary's `checks` say which).
 * @module
 */
import {
  AdamW,
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  cpuDevice,
  Device,
  DeviceError,
  manualSeed,
  PeftConfig,
  train,
  webgpuDevice,
} from "../mod.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { WebGpuBackend } from "../src/backend/webgpu/backend.ts";
import { QUICK_CONFIG } from "./quick_model.ts";
import { randomTokens } from "./model_bench.ts";

/** LoRA on every projection, as bench/model_bench.ts (PEFT's names: the last part of the module name). */
const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map((n) =>
  `*.${n}`
);

/** The soak's settings. */
export interface SoakArgs {
  ckpt: string | null;
  tiny: boolean;
  device: "webgpu" | "cpu";
  steps: number;
  batch: number;
  seq: number;
  checkpointEvery: number;
  loseAt: number;
  resumeTo: number;
  warmup: number;
  out: string | null;
  json: string | null;
  series: number;
  maxDrift: number;
  tolerance: number;
  oversize: number;
  seed: number;
  quiet: boolean;
}

/** Reads the command line (see the module's usage). */
export function parseSoakArgs(argv: string[]): SoakArgs {
  const get = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string, fallback: number) => {
    const v = Number(get(name) ?? fallback);
    if (!Number.isFinite(v)) throw new Error(`soak: ${name} must be a number, got ${get(name)}`);
    return v;
  };
  const tiny = argv.includes("--tiny");
  const ckpt = get("--ckpt") ?? null;
  if (!tiny && ckpt === null) throw new Error("soak: give --ckpt DIR (or --tiny)");
  const steps = num("--steps", tiny ? 30 : 1000);
  const checkpointEvery = num("--checkpoint-every", tiny ? 10 : 100);
  // Lose the device a quarter of an interval past a checkpoint, three quarters of the way through the run
  // at most; resume to the next checkpoint after the loss.
  const defaultLose = Math.min(
    steps - 1,
    Math.max(checkpointEvery, Math.floor((steps * 0.25) / checkpointEvery) * checkpointEvery) +
      Math.max(1, Math.floor(checkpointEvery / 2)),
  );
  const loseAt = num("--lose-at", defaultLose);
  const resumeTo = num("--resume-to", Math.min(steps, Math.ceil(loseAt / checkpointEvery) * checkpointEvery));
  const a: SoakArgs = {
    ckpt,
    tiny,
    device: (get("--device") ?? (tiny ? "cpu" : "webgpu")) as "webgpu" | "cpu",
    steps,
    batch: num("--batch", 1),
    seq: num("--seq", tiny ? 32 : 512),
    checkpointEvery,
    loseAt,
    resumeTo,
    warmup: num("--warmup", 5),
    out: get("--out") ?? null,
    json: get("--json") ?? null,
    series: num("--series", 100),
    maxDrift: num("--max-drift", 1 << 20),
    tolerance: num("--tolerance", 1e-5),
    oversize: num("--oversize", 16),
    seed: num("--seed", 1234),
    quiet: argv.includes("--quiet"),
  };
  if (a.device !== "webgpu" && a.device !== "cpu") throw new Error(`soak: --device webgpu|cpu`);
  if (!(a.loseAt >= a.checkpointEvery && a.loseAt < a.resumeTo && a.resumeTo <= a.steps)) {
    throw new Error(
      `soak: need --checkpoint-every (${a.checkpointEvery}) <= --lose-at (${a.loseAt}) < --resume-to ` +
        `(${a.resumeTo}) <= --steps (${a.steps})`,
    );
  }
  return a;
}

/** A device of the kind asked for; on the CPU a fresh one each call (destroying one leaves the others). */
async function openDevice(kind: "webgpu" | "cpu", fresh: boolean): Promise<Device> {
  if (kind === "webgpu") return await webgpuDevice();
  return fresh ? new Device(createCpuBackend(), "cpu", "CPU reference (soak)") : cpuDevice();
}

/** The device lost as a driver reset loses it: the GPUDevice destroyed under the library (WebGPU). */
function loseDevice(device: Device): string {
  if (device.kind === "webgpu") {
    (device.backend as WebGpuBackend).gpuDevice.destroy();
    return "GPUDevice.destroy()";
  }
  device.destroy();
  return "Device.destroy()";
}

/** One memory sample: taken when train() asks for a step's batch. */
interface Sample {
  step: number;
  live: number;
  peak: number;
  pooled: number;
}

type Batch = { inputIds: { data: Int32Array; shape: number[] } };

/** The model, its LoRA adapters and optimizer on `device`, the same every time for the same seed. */
async function build(a: SoakArgs, device: Device) {
  const model = a.ckpt === null
    ? AutoModelForCausalLM.fromConfig(QUICK_CONFIG, { device, seed: 0 })
    : await AutoModelForCausalLM.fromPretrained(a.ckpt, { device });
  manualSeed(a.seed);
  applyLoraToLinearModules(
    model,
    new PeftConfig({ targetModules: TARGETS, dim: 16, alpha: 32, dropout: 0, loraAInit: "kaiming" }),
  );
  const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-4, weightDecay: 0.01 });
  const vocab = (model as unknown as { config: { vocabSize: number } }).config.vocabSize;
  return { model, optimizer, vocab };
}

/** Step s's batch (the same for every run): `scale` times the rows with `scale` > 1. */
function batchAt(a: SoakArgs, vocab: number, s: number, scale = 1): Batch {
  const rows = a.batch * scale, n = rows * a.seq;
  return { inputIds: { data: randomTokens(a.seed, s * n, n, vocab), shape: [rows, a.seq] } };
}

const mib = (b: number) => +(b / 2 ** 20).toFixed(2);

/** Runs the three parts; returns the summary (also printed) and whether every check passed. */
export async function soak(a: SoakArgs): Promise<{ ok: boolean; summary: Record<string, unknown> }> {
  const log = (s: string) => {
    if (!a.quiet) console.error(`[soak] ${s}`);
  };
  const out = a.out ?? await Deno.makeTempDir({ prefix: "soak-" });
  const started = performance.now();
  const checks: Record<string, { ok: boolean; detail: string }> = {};
  const check = (name: string, ok: boolean, detail: string) => {
    checks[name] = { ok, detail };
    log(`${ok ? "PASS" : "FAIL"} ${name}: ${detail}`);
  };
  const summary: Record<string, unknown> = { kind: "soak", args: { ...a, out }, checks };

  // ---- 1. the reference run, memory sampled every step
  const dev0 = await openDevice(a.device, false);
  summary.device = `${dev0}`;
  let t = performance.now();
  const ref = await build(a, dev0);
  summary.params = ref.model.parameters().reduce((s, p) => s + p.size, 0);
  summary.trainable_params = ref.optimizer.params.reduce((s, p) => s + p.size, 0);
  log(`${dev0}: model ready in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  const samples: Sample[] = [];
  const windows: { step: number; msPerStep: number; loss: number }[] = [];
  let lastReport = performance.now(), lastStep = 0;
  let reportedAt: number | null = null;
  const checkpointMs: number[] = [];
  t = performance.now();
  const refRun = await train({
    model: ref.model,
    optimizer: ref.optimizer,
    steps: a.steps,
    logEvery: a.checkpointEvery,
    checkpointDir: `${out}/reference`,
    batches: (s) => {
      // train() saves its checkpoint right after reporting: the gap from the report to this call is it.
      if (reportedAt !== null) checkpointMs.push(+(performance.now() - reportedAt).toFixed(1));
      reportedAt = null;
      const m = dev0.memory();
      samples.push({ step: s, live: m.bytes, peak: m.peakBytes, pooled: m.pooledBytes });
      dev0.resetPeakMemory();
      return batchAt(a, ref.vocab, s);
    },
    onProgress: (p) => {
      const now = performance.now();
      const ms = (now - lastReport) / (p.step - lastStep);
      windows.push({ step: p.step, msPerStep: +ms.toFixed(2), loss: +p.loss.toFixed(5) });
      lastReport = now, lastStep = p.step;
      reportedAt = performance.now();
      const m = dev0.memory();
      log(
        `reference step ${p.step}/${a.steps} loss ${p.loss.toFixed(4)} ${ms.toFixed(1)} ms/step ` +
          `live ${mib(m.bytes)} MiB peak ${mib(samples.at(-1)!.peak)} MiB pooled ${mib(m.pooledBytes)} MiB`,
      );
    },
  });
  const refSeconds = (performance.now() - t) / 1000;
  const after = dev0.memory();
  samples.push({ step: a.steps, live: after.bytes, peak: after.peakBytes, pooled: after.pooledBytes });
  // Sample s (s >= 1) was taken before step s + 1: its peak covers step s and that step's report.
  const steady = samples.filter((x) => x.step >= a.warmup);
  const range = (xs: number[]) => Math.max(...xs) - Math.min(...xs);
  const liveDrift = range(steady.map((x) => x.live)), peakDrift = range(steady.map((x) => x.peak));
  const every = Math.max(1, Math.round(samples.length / a.series));
  summary.reference = {
    steps: a.steps,
    seconds: +refSeconds.toFixed(2),
    ms_per_step: +((refSeconds * 1000) / a.steps).toFixed(2),
    windows,
    // Each checkpoint's save (the last one, after the final step, is not timed).
    checkpoint_ms: checkpointMs,
    ms_per_step_without_checkpoints: +(
      (refSeconds * 1000 - checkpointMs.reduce((a, b) => a + b, 0)) / a.steps
    ).toFixed(2),
    losses_first: refRun.losses.slice(0, 3),
    losses_last: refRun.losses.slice(-3),
    finite: refRun.losses.every(Number.isFinite),
    memory: {
      warmup_steps: a.warmup,
      live_bytes_max: Math.max(...steady.map((x) => x.live)),
      live_drift_bytes: liveDrift,
      peak_bytes_max: Math.max(...steady.map((x) => x.peak)),
      peak_drift_bytes: peakDrift,
      pooled_bytes_max: Math.max(...steady.map((x) => x.pooled)),
      // Freed buffers the WebGPU pool keeps for reuse: reported, not checked (its size follows the peak).
      pooled_drift_bytes: range(steady.map((x) => x.pooled)),
      series: samples.filter((_, i) => i % every === 0 || i === samples.length - 1),
    },
  };
  log(`checkpoints took ${checkpointMs.join(", ")} ms`);
  check("losses finite", refRun.losses.every(Number.isFinite), `${refRun.losses.length} losses`);
  check(
    "memory flat",
    liveDrift <= a.maxDrift && peakDrift <= a.maxDrift,
    `after step ${a.warmup}: live drift ${liveDrift} B, peak drift ${peakDrift} B (allowed ${a.maxDrift} B); ` +
      `live ${mib(Math.max(...steady.map((x) => x.live)))} MiB, peak ${
        mib(Math.max(...steady.map((x) => x.peak)))
      } MiB`,
  );
  const stepPeak = Math.max(...steady.map((x) => x.peak));
  ref.optimizer.dispose();
  if (dev0.kind === "webgpu") dev0.destroy();

  // ---- 3 (first, on part 2's device): a batch too large for the budget
  const dev1 = await openDevice(a.device, true);
  const run1 = await build(a, dev1);
  const limit = Math.ceil(stepPeak * 1.5);
  dev1.setMemoryLimit(limit);
  dev1.resetPeakMemory();
  const before = dev1.memory();
  let oversizeError: unknown = null;
  t = performance.now();
  try {
    await train({
      model: run1.model,
      optimizer: run1.optimizer,
      steps: 1,
      batches: [batchAt(a, run1.vocab, 0, a.oversize)],
    });
  } catch (e) {
    oversizeError = e;
  }
  const oversizeMs = performance.now() - t;
  const afterOversize = dev1.memory();
  const msg = oversizeError instanceof Error ? oversizeError.message : String(oversizeError);
  summary.oversize = {
    limit_bytes: limit,
    batch: [a.batch * a.oversize, a.seq],
    error: oversizeError === null ? null : `${(oversizeError as Error).name}: ${msg}`,
    ms: +oversizeMs.toFixed(1),
    live_before: before.bytes,
    live_after: afterOversize.bytes,
    peak_after: afterOversize.peakBytes,
  };
  check(
    "oversized batch refused",
    oversizeError instanceof DeviceError && /\d{4,} bytes/.test(msg) && /train/.test(msg),
    oversizeError === null ? "no error" : `${(oversizeError as Error).name}: ${msg.slice(0, 300)}`,
  );
  check(
    "nothing of the oversized step allocated",
    afterOversize.bytes === before.bytes && afterOversize.peakBytes === before.peakBytes,
    `live ${before.bytes} -> ${afterOversize.bytes} B, peak ${before.peakBytes} -> ${afterOversize.peakBytes} B`,
  );

  // ---- 2. the same run on dev1 (under the limit), lost after step loseAt, resumed on a new device
  const faultDir = `${out}/fault`;
  const faultLosses: number[] = [];
  let lostHow = "";
  let lostError: unknown = null;
  t = performance.now();
  try {
    await train({
      model: run1.model,
      optimizer: run1.optimizer,
      steps: a.steps,
      logEvery: a.checkpointEvery,
      checkpointDir: faultDir,
      batches: (s) => {
        if (s === a.loseAt) {
          lostHow = loseDevice(dev1);
          log(`fault run: device lost after step ${s} (${lostHow})`);
        }
        return batchAt(a, run1.vocab, s);
      },
      onProgress: (p) => {
        faultLosses.push(...p.losses);
        log(`fault run step ${p.step} loss ${p.loss.toFixed(4)}`);
      },
    });
  } catch (e) {
    lostError = e;
  }
  const faultSeconds = (performance.now() - t) / 1000;
  const lostMsg = lostError instanceof Error ? `${lostError.name}: ${lostError.message}` : String(lostError);
  check(
    "device loss reported",
    lostError instanceof DeviceError,
    lostError === null ? "train() finished without noticing" : lostMsg.slice(0, 300),
  );
  // The steps before the loss ran under the memory limit on the device that refused the oversized batch.
  const firstSteps = faultLosses.length;
  let preWorst = 0;
  for (let i = 0; i < firstSteps; i++) {
    preWorst = Math.max(preWorst, Math.abs(faultLosses[i] - refRun.losses[i]));
  }
  const tol = a.device === "cpu" ? 0 : a.tolerance;
  check(
    "steps after the refused batch match the reference",
    firstSteps > 0 && preWorst <= tol,
    `${firstSteps} steps on the same device, worst |loss - reference| ${preWorst} (allowed ${tol})`,
  );

  const dev2 = await openDevice(a.device, true);
  const run2 = await build(a, dev2);
  t = performance.now();
  const resumed = await train({
    model: run2.model,
    optimizer: run2.optimizer,
    steps: a.resumeTo,
    logEvery: a.checkpointEvery,
    checkpointDir: faultDir,
    resumeFrom: faultDir,
    batches: (s) => batchAt(a, run2.vocab, s),
  });
  const resumeSeconds = (performance.now() - t) / 1000;
  const from = Math.floor(a.loseAt / a.checkpointEvery) * a.checkpointEvery;
  const diffs: number[] = [];
  for (let s = from; s < a.resumeTo; s++) diffs.push(Math.abs(resumed.losses[s] - refRun.losses[s]));
  const worst = Math.max(...diffs);
  summary.fault = {
    lost_after_step: a.loseAt,
    lost_how: lostHow,
    error: lostMsg,
    fault_run_seconds: +faultSeconds.toFixed(2),
    resumed_from_step: from,
    resumed_to_step: a.resumeTo,
    resume_seconds: +resumeSeconds.toFixed(2),
    worst_abs_diff: worst,
    tolerance: tol,
    resumed_losses: resumed.losses.slice(from, a.resumeTo).slice(0, 5),
    reference_losses: refRun.losses.slice(from, a.resumeTo).slice(0, 5),
  };
  check(
    "resumed losses match the uninterrupted run",
    diffs.length === a.resumeTo - from && worst <= tol,
    `steps ${from + 1}-${a.resumeTo} on a new device, worst |loss - reference| ${worst} (allowed ${tol})`,
  );
  run2.optimizer.dispose();
  if (dev2.kind === "webgpu") dev2.destroy();
  if (a.out === null) await Deno.remove(out, { recursive: true }).catch(() => {});
  summary.seconds = +((performance.now() - started) / 1000).toFixed(2);
  const ok = Object.values(checks).every((c) => c.ok);
  summary.ok = ok;
  return { ok, summary };
}

if (import.meta.main) {
  const a = parseSoakArgs(Deno.args);
  const { ok, summary } = await soak(a);
  const text = JSON.stringify(summary);
  console.log(text);
  if (a.json !== null) await Deno.writeTextFile(a.json, text + "\n");
  console.error(`[soak] ${ok ? "all checks passed" : "SOME CHECKS FAILED"} in ${summary.seconds} s`);
  Deno.exit(ok ? 0 : 1);
}
