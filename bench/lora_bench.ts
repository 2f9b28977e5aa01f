/**
 * LoRA linear benchmark: this library's fused and composed paths, the base GEMM alone, and jax-js
 * doing the same LoRA forward + backward under jit(grad(...)), all in one run on one adapter.
 *
 * Deno spends ≥ 11 ms on every await of GPU work, so each measurement queues many steps and awaits once,
 * then divides. Warm-up first; the median of several repetitions; random inputs, never zeros.
 *
 * Usage: deno task bench            (quick sizes, any adapter)
 *        deno task bench:gpu        (a real GPU; (M, D, r) = (8192, 4096, 16), (2048, 2048, 8),
 *                                    (512, 4096, 16))
 *        deno run -A bench/lora_bench.ts --tiny   (a few seconds; CI runs it so the bench cannot rot)
 * Options: --no-jax, --dtype f32|f16|both, --json PATH,
 *          --dawn   (run on Dawn, the `webgpu` npm package's dawn.node, instead of Deno's own WebGPU; with
 *                    --dawn-toggles a,b for Dawn toggles: bench/bench_device.ts)
 *          --tune   (hardware GPUs: time every candidate tile and k split for each GEMM of the fused op at
 *                    each size and for the square GEMM (bench/gemm_tune.ts), print them, and run the rest of
 *                    the bench on the fastest plan per shape; the planner's plan is checked against the CPU
 *                    by the test suite, the tuned ones against the planner's)
 *          --stream-k N (the GEMM profile's stream-K workgroups, 0 = off, instead of the tuned table's),
 *          --no-pair (the backward's dA and dB as two products, not one pair dispatch: GemmProfile.pair),
 *          --pair-tile TM,TN,KL (the pair's lane tile instead of gemm_plan.ts pairTile's),
 *          --profile (GPU time per kernel, GEMM shape and plan of one fused forward + backward per size)
 *          --shapes M,D,r;M,D,r (sizes instead of the mode's), --reps N (repetitions, default 5),
 *          --cover-ms T (the full mode's milliseconds of steps per await, default 250),
 *          --timing pipelined|await (full mode on a GPU: "pipelined", the default, records the next batch
 *                    before awaiting the last and times the gaps between completions, the GPU's own time
 *                    per step; "await" includes each await's fixed cost, as the bench did before),
 *          --warm-ms T (the full mode's warm-up at load before each measure, default 600: an idle H200
 *                    needs about 0.25 s of load to raise its clock), --poll plain|throttle|wake (how awaits
 *                    let the WebGPU implementation poll: GpuRuntime.pollMode; default throttle)
 *
 * Steps per await: 10 in the quick and tiny modes (the software-adapter goal is stated for 10); in the full
 * mode enough steps to cover about a quarter of a second per await, so that the await's fixed cost stays
 * small against the millisecond-scale steps being measured.
 */
import {
  type Device,
  type DType,
  Linear,
  linear,
  loraLinear,
  patchLinearModule,
  profile,
  randn,
  type Tensor,
  tidy,
} from "../mod.ts";
import type { WebGpuBackend } from "../src/backend/webgpu/backend.ts";
import { type GemmChoice, type GemmShape, laneTile } from "../src/backend/webgpu/gemm_plan.ts";
import { benchDevice, implementationName } from "./bench_device.ts";
import { loraShapes, tunedEntries, type TuneResult, tuneShapes, tuneTable } from "./gemm_tune.ts";

interface Shape {
  M: number;
  D: number;
  r: number;
}

const args = new Set(Deno.args);
const opt = (name: string, fallback: string) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : fallback;
};
const mode = args.has("--full") ? "full" : args.has("--tiny") ? "tiny" : "quick";
const shapesOpt = opt("--shapes", "");
const shapes: Shape[] = shapesOpt !== ""
  ? shapesOpt.split(";").map((p) => {
    const [M, D, r] = p.split(",").map(Number);
    return { M, D, r };
  })
  : mode === "full"
  ? [{ M: 8192, D: 4096, r: 16 }, { M: 2048, D: 2048, r: 8 }, { M: 512, D: 4096, r: 16 }]
  : mode === "quick"
  ? [{ M: 1024, D: 256, r: 16 }, { M: 512, D: 512, r: 8 }]
  : [{ M: 64, D: 48, r: 4 }];
const reps = Number(opt("--reps", mode === "tiny" ? "2" : "5"));
const stepsPerAwait = mode === "full" ? 10 : mode === "quick" ? 10 : 2;
const withJax = !args.has("--no-jax") && mode !== "tiny";
const gemmSize = mode === "full" ? 4096 : mode === "quick" ? 1024 : 64;

const device: Device = await benchDevice(Deno.args);
const pollMode = opt("--poll", "");
if (pollMode !== "") (device.backend as unknown as WebGpuBackend).rt.pollMode = pollMode as "plain";
const implementation = implementationName(Deno.args);
// --stream-k N: the tiled GEMM profile's stream-K workgroups (GemmProfile.streamK; 0 = off), in place of
// the tuned table's, to compare stream-K plans against whole-tile grids on one adapter.
const streamKOpt = opt("--stream-k", "");
if (streamKOpt !== "") {
  const be = device.backend as unknown as WebGpuBackend;
  const groups = Number(streamKOpt);
  if (!Number.isInteger(groups) || groups < 0) {
    throw new Error(`lora_bench: --stream-k must be a workgroup count (0 = off), got "${streamKOpt}"`);
  }
  be.gemmProfile = { ...be.gemmProfile, streamK: groups === 0 ? undefined : groups };
}
// --no-pair: the fused LoRA backward's dA and dB as two products (GemmProfile.pair false) instead of one
// pair dispatch, to compare both on one adapter in one run.
// --pair-tile TM,TN,KL: the pair's lane tile (gemm_plan.ts laneTile) in place of pairTile's choice.
const pairTileOpt = opt("--pair-tile", "");
if (args.has("--no-pair") || pairTileOpt !== "") {
  const be = device.backend as unknown as WebGpuBackend;
  const [TM, TN, KL] = pairTileOpt.split(",").map(Number);
  be.gemmProfile = { ...be.gemmProfile, pair: pairTileOpt === "" ? false : laneTile(TM, TN, KL) };
}
const streamK = (device.backend as unknown as WebGpuBackend).gemmProfile.streamK ?? 0;
const dtypeOpt = opt("--dtype", "both");
const dtypes: DType[] = (dtypeOpt === "both" ? ["f32", "f16"] as DType[] : [dtypeOpt as DType])
  .filter((d) => d === "f32" || device.supportsDType(d));
console.error(
  `bench: ${mode} on ${device} through ${implementation} (${new Date().toISOString().slice(0, 10)}), dtypes ${
    dtypes.join(", ")
  }`,
);

/**
 * How the full mode times a step on a GPU: "pipelined" (default) keeps the next batch queued while it
 * awaits the last, so the figure is the GPU's steady-state time per step, as PyTorch's CUDA events give
 * it; "await" divides the time of each batch and its await, whose fixed cost (about 11 ms in Deno, 1-3 ms
 * with Dawn) stays in the figure. The quick and tiny modes and software adapters use "await" unless told.
 */
const timing = opt("--timing", "");
if (timing !== "" && timing !== "pipelined" && timing !== "await") {
  throw new Error(`lora_bench: --timing must be "pipelined" or "await", got "${timing}"`);
}
const pipelined = device.kind === "webgpu" &&
  (timing === "pipelined" || (timing === "" && mode === "full" && !device.isSoftware));

/** Milliseconds the steps of one await should cover in the full mode. */
const AWAIT_COVER_MS = Number(opt("--cover-ms", "250"));

/**
 * Steps per await for a step of about `msPerStep`: fixed outside the full mode, else enough to cover
 * {@link AWAIT_COVER_MS} (at least 10, at most 500).
 */
function stepsFor(msPerStep: number): number {
  if (mode !== "full") return stepsPerAwait;
  return Math.min(500, Math.max(stepsPerAwait, Math.ceil(AWAIT_COVER_MS / Math.max(msPerStep, 1e-3))));
}

/** Steps per await used by the last {@link time} call (for the table). */
let lastSteps = stepsPerAwait;

/**
 * Milliseconds of back-to-back steps the full mode's warm-up runs before measuring: an idle H200 sits at
 * 345 MHz and reaches its 1980 MHz clock only after about a quarter of a second of load (nvidia-smi, see
 * bench/NOTES.md), so a short warm-up measures the first reps at a fraction of the clock.
 */
const WARM_MS = mode === "full" ? Number(opt("--warm-ms", "600")) : 0;

/** Median milliseconds per step of `step`, many steps per await. */
async function time(step: () => void): Promise<number> {
  step();
  await device.backend.sync(); // warm-up: pipelines compiled, pools filled
  let t0 = performance.now();
  for (let i = 0; i < stepsPerAwait; i++) step();
  await device.backend.sync();
  // Warm-up at load until the clocks are up, then time one more batch for the steps-per-await estimate.
  const warmStart = t0;
  while (performance.now() - warmStart < WARM_MS) {
    t0 = performance.now();
    for (let i = 0; i < stepsPerAwait; i++) step();
    await device.backend.sync();
  }
  const n = stepsFor((performance.now() - t0) / stepsPerAwait);
  lastSteps = n;
  const samples: number[] = [];
  if (pipelined) {
    // reps + 1 batches of n steps; each batch's completion is awaited only once the next one is recorded
    // and submitted, so the GPU runs through the wait and the time between two completions is one batch
    // of GPU work, not GPU work plus an await's fixed cost.
    const rt = (device.backend as unknown as WebGpuBackend).rt;
    for (let i = 0; i < n; i++) step();
    let pending = rt.submitted();
    let last = 0;
    for (let r = 0; r <= reps; r++) {
      if (r < reps) { for (let i = 0; i < n; i++) step(); }
      const next = r < reps ? rt.submitted() : null;
      await pending;
      const now = performance.now();
      if (r > 0) samples.push((now - last) / n);
      last = now;
      if (next !== null) pending = next;
    }
  } else {
    for (let r = 0; r < reps; r++) {
      const t1 = performance.now();
      for (let i = 0; i < n; i++) step();
      await device.backend.sync();
      samples.push((performance.now() - t1) / n);
    }
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)];
}

interface Row {
  shape: string;
  dtype: string;
  measure: string;
  ms: number;
  steps: number;
  note?: string;
}
const rows: Row[] = [];
const record = (s: Shape, dtype: string, measure: string, ms: number, note?: string, steps = lastSteps) => {
  rows.push({ shape: `(${s.M}, ${s.D}, ${s.r})`, dtype, measure, ms, steps, note });
  console.error(
    `  ${measure.padEnd(28)} ${dtype} ${`(${s.M}, ${s.D}, ${s.r})`.padEnd(18)} ${ms.toFixed(3)} ms`,
  );
};

/** A profile choice that takes the tuned plan of each tuned shape (exact m, n, k and layout). */
function tunedChoice(results: readonly TuneResult[]): (shape: GemmShape) => GemmChoice | undefined {
  const table = new Map<string, GemmChoice>();
  for (const r of results) {
    const s = r.shape;
    table.set(`${s.m},${s.n},${s.k},${s.transA},${s.transB}`, { tile: r.best.tile, splits: r.best.splits });
  }
  return (s) => table.get(`${s.m},${s.n},${s.k},${s.transA ?? false},${s.transB ?? false}`);
}

const tuneRows: string[] = [];
if (args.has("--tune") && (!device.isSoftware || mode === "tiny")) {
  const be = device.backend as unknown as WebGpuBackend;
  const tuneList = [
    ...shapes.flatMap((s) => loraShapes(s.M, s.D, s.r)),
    {
      name: `GEMM ${gemmSize}^3`,
      m: gemmSize,
      n: gemmSize,
      k: gemmSize,
      transA: false,
      transB: true,
      lora: 0,
    },
  ];
  const results = await tuneShapes(device, tuneList, { budgetS: Number(opt("--tune-budget-s", "60")) });
  tuneRows.push(...tuneTable(results), "", "Tuned entries:", ...tunedEntries(results));
  const bad = results.filter((r) => r.err > 1e-5);
  if (bad.length > 0) {
    console.error(`  tune: results differ from the planner's: ${bad.map((r) => r.shape.name).join(", ")}`);
  }
  const good = results.filter((r) => r.err <= 1e-5);
  be.gemmProfile = { ...be.gemmProfile, choose: tunedChoice(good) };
  console.error(`  tune: the rest of the run uses the tuned plans of ${good.length} shapes`);
}

/** With --profile: one more run of `step` under a detailed profile, its slowest kernels printed. */
async function profileStep(what: string, step: () => void): Promise<void> {
  if (!args.has("--profile")) return;
  const p = await profile(step, { device, detail: true });
  console.log(
    `profile ${what}: ${p.totalMs.toFixed(3)} ms wall, ${
      p.measuredMs.toFixed(3)
    } ms in kernels (${p.timing})`,
  );
  for (const row of p.rows.slice(0, 12)) {
    console.log(`  ${row.ms.toFixed(3).padStart(9)} ms  x${row.calls}  ${row.name}`);
  }
}

for (const s of shapes) {
  for (const dtype of dtypes) {
    const opts = { device, dtype };
    const x = randn([s.M, s.D], { ...opts, seed: 1, requiresGrad: true });
    const dy = randn([s.M, s.D], { ...opts, seed: 2 });
    const base = new Linear(s.D, s.D, { device, dtype, seed: 3 });
    const fused = patchLinearModule(base, { dim: s.r, alpha: 2 * s.r, seed: 4 });
    // B starts at zero; make it random so no kernel can shortcut.
    fused.lora_B.weight._assign(randn([s.D, s.r], { ...opts, seed: 5 }).scale(0.1));
    fused.lora_B.weight.requiresGrad = true;
    const W = fused.weight, b = fused.bias, A = fused.lora_A.weight, B = fused.lora_B.weight;
    const clearGrads = () => {
      for (const t of [x, A, B]) {
        t.grad?.dispose();
        t.grad = null;
      }
    };
    const fwd = () => tidy(() => void loraLinear(x, W, b, A, B, fused.scale));
    const fwdBwd = (useFused: boolean) => () =>
      tidy(() => {
        fused.useFused = useFused;
        fused.forward(x).backward(dy);
        clearGrads();
      });
    const baseFwdBwd = () =>
      tidy(() => {
        const Wt = W as Tensor;
        Wt.requiresGrad = false;
        linear(x, Wt, b).backward(dy);
        clearGrads();
      });
    const measures: [string, () => void][] = [
      ["fused forward", fwd],
      ["fused forward+backward", fwdBwd(true)],
      ["composed forward+backward", fwdBwd(false)],
      ["base linear forward+backward", baseFwdBwd],
    ];
    for (const [what, step] of measures) {
      record(s, dtype, what, await time(step));
      await profileStep(`${what} ${dtype} (${s.M}, ${s.D}, ${s.r})`, step);
    }
    for (const t of [x, dy, W, b, A, B]) t?.dispose();
  }
  if (withJax) {
    try {
      // Imported only when used: with --no-jax the bench runs where @jax-js is not installed.
      const { jaxLoraStep } = await import("./jax_peer.ts");
      const jax = await jaxLoraStep(s.M, s.D, s.r);
      await jax.run(2);
      const t0 = performance.now();
      await jax.run(stepsPerAwait);
      const n = stepsFor((performance.now() - t0) / stepsPerAwait);
      const samples: number[] = [];
      for (let r = 0; r < reps; r++) {
        const t1 = performance.now();
        await jax.run(n);
        samples.push((performance.now() - t1) / n);
      }
      samples.sort((a, b) => a - b);
      record(s, "f32", "jax-js jit(grad) fwd+bwd", samples[Math.floor(samples.length / 2)], undefined, n);
      jax.dispose();
    } catch (e) {
      console.error(`  jax-js skipped: ${(e as Error).message}`);
    }
  }
}

// Plain GEMM throughput.
for (const dtype of dtypes) {
  const n = gemmSize;
  const a = randn([n, n], { device, dtype, seed: 7 }), w = randn([n, n], { device, dtype, seed: 8 });
  const ms = await time(() => tidy(() => void linear(a, w)));
  const s = { M: n, D: n, r: 0 };
  const gflops = (2 * n ** 3) / (ms * 1e6);
  record(
    s,
    dtype,
    `GEMM ${n}^3`,
    ms,
    gflops >= 1000 ? `${(gflops / 1000).toFixed(2)} TFLOP/s` : `${gflops.toFixed(1)} GFLOP/s`,
  );
  a.dispose();
  w.dispose();
}

const byKey = new Map(rows.map((r) => [`${r.shape}|${r.dtype}|${r.measure}`, r.ms]));
const ratio = (s: string, d: string) =>
  byKey.get(`${s}|${d}|fused forward+backward`)! / byKey.get(`${s}|${d}|base linear forward+backward`)!;

const jsonPath = opt("--json", `bench/results/lora_bench_${mode}.json`);
await Deno.mkdir(jsonPath.replace(/\/[^/]*$/, ""), { recursive: true }).catch(() => {});
const report = {
  date: new Date().toISOString(),
  device: String(device),
  implementation,
  mode,
  reps,
  timing: pipelined ? "pipelined" : "await",
  streamK,
  tune: tuneRows,
  rows,
};
await Deno.writeTextFile(`${jsonPath}.tmp`, JSON.stringify(report, null, 2));
await Deno.rename(`${jsonPath}.tmp`, jsonPath);

if (tuneRows.length > 0) {
  console.log(`\nGEMM plans per shape (--tune), f32, GPU ms per product`);
  for (const r of tuneRows) console.log(r);
}
console.log(
  `\nLoRA linear on ${device} through ${implementation}, ${report.date.slice(0, 10)} (median ms per step, ${
    pipelined ? "pipelined: GPU time between batch completions" : "each batch with its await"
  })`,
);
console.log("| shape (M, D, r) | dtype | measure | ms | steps per await | note |");
console.log("|---|---|---|---|---|---|");
for (const r of rows) {
  let note = r.note ?? "";
  if (r.measure === "fused forward+backward") {
    note = `fused / base-only = ${ratio(r.shape, r.dtype).toFixed(2)}`;
  }
  if (r.measure.startsWith("jax-js")) {
    const ours = byKey.get(`${r.shape}|f32|fused forward+backward`);
    if (ours) note = `ours f32 fused = ${(ours / r.ms).toFixed(2)}× jax-js time`;
  }
  console.log(`| ${r.shape} | ${r.dtype} | ${r.measure} | ${r.ms.toFixed(3)} | ${r.steps} | ${note} |`);
}
console.log(`\nJSON: ${jsonPath}`);
// Dawn's instance keeps the process alive while the GPU object is referenced.
device.destroy();
Deno.exit(0);
