/**
 * LoRA linear benchmark: this library's fused and composed paths, the base GEMM alone, and jax-js
 * doing the same LoRA forward + backward under jit(grad(...)), all in one run on one adapter.
 *
 * Deno spends ≥ 11 ms on every await of GPU work, so each measurement queues many steps and awaits once,
 * then divides. Warm-up first; the median of several repetitions; random inputs, never zeros.
 *
 * Usage: deno task bench            (quick sizes, any adapter)
 *        deno task bench:gpu        (the issue's full sizes, for a real GPU)
 *        deno run -A bench/lora_bench.ts --tiny   (a few seconds; CI runs it so the bench cannot rot)
 * Options: --no-jax, --dtype f32|f16|both, --json PATH
 */
import {
  type Device,
  type DType,
  Linear,
  linear,
  loraLinear,
  patchLinearModule,
  randn,
  type Tensor,
  tidy,
  webgpuDevice,
} from "../mod.ts";
import { jaxLoraStep } from "./jax_peer.ts";

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
const shapes: Shape[] = mode === "full"
  ? [{ M: 8192, D: 4096, r: 16 }, { M: 2048, D: 2048, r: 8 }, { M: 512, D: 4096, r: 16 }]
  : mode === "quick"
  ? [{ M: 1024, D: 256, r: 16 }, { M: 512, D: 512, r: 8 }]
  : [{ M: 64, D: 48, r: 4 }];
const reps = mode === "tiny" ? 2 : 5;
const stepsPerAwait = mode === "full" ? 10 : mode === "quick" ? 10 : 2;
const withJax = !args.has("--no-jax") && mode !== "tiny";
const gemmSize = mode === "full" ? 4096 : mode === "quick" ? 1024 : 64;

const device: Device = await webgpuDevice();
const dtypeOpt = opt("--dtype", "both");
const dtypes: DType[] = (dtypeOpt === "both" ? ["f32", "f16"] as DType[] : [dtypeOpt as DType])
  .filter((d) => d === "f32" || device.supportsDType(d));
console.error(
  `bench: ${mode} on ${device} (${new Date().toISOString().slice(0, 10)}), dtypes ${dtypes.join(", ")}`,
);

/** Median milliseconds per step of `step`, `stepsPerAwait` steps per await. */
async function time(step: () => void, n = stepsPerAwait): Promise<number> {
  step();
  await device.backend.sync(); // warm-up: pipelines compiled, pools filled
  const samples: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) step();
    await device.backend.sync();
    samples.push((performance.now() - t0) / n);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)];
}

interface Row {
  shape: string;
  dtype: string;
  measure: string;
  ms: number;
  note?: string;
}
const rows: Row[] = [];
const record = (s: Shape, dtype: string, measure: string, ms: number, note?: string) => {
  rows.push({ shape: `(${s.M}, ${s.D}, ${s.r})`, dtype, measure, ms, note });
  console.error(
    `  ${measure.padEnd(28)} ${dtype} ${`(${s.M}, ${s.D}, ${s.r})`.padEnd(18)} ${ms.toFixed(3)} ms`,
  );
};

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
    record(s, dtype, "fused forward", await time(fwd));
    record(s, dtype, "fused forward+backward", await time(fwdBwd(true)));
    record(s, dtype, "composed forward+backward", await time(fwdBwd(false)));
    record(s, dtype, "base linear forward+backward", await time(baseFwdBwd));
    for (const t of [x, dy, W, b, A, B]) t?.dispose();
  }
  if (withJax) {
    try {
      const jax = await jaxLoraStep(s.M, s.D, s.r);
      await jax.run(2);
      const samples: number[] = [];
      for (let r = 0; r < reps; r++) {
        const t0 = performance.now();
        await jax.run(stepsPerAwait);
        samples.push((performance.now() - t0) / stepsPerAwait);
      }
      samples.sort((a, b) => a - b);
      record(s, "f32", "jax-js jit(grad) fwd+bwd", samples[Math.floor(samples.length / 2)]);
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
const report = { date: new Date().toISOString(), device: String(device), mode, stepsPerAwait, reps, rows };
await Deno.writeTextFile(`${jsonPath}.tmp`, JSON.stringify(report, null, 2));
await Deno.rename(`${jsonPath}.tmp`, jsonPath);

console.log(
  `\nLoRA linear on ${device}, ${
    report.date.slice(0, 10)
  } (median ms per step, ${stepsPerAwait} steps per await)`,
);
console.log("| shape (M, D, r) | dtype | measure | ms | note |");
console.log("|---|---|---|---|---|");
for (const r of rows) {
  let note = r.note ?? "";
  if (r.measure === "fused forward+backward") {
    note = `fused / base-only = ${ratio(r.shape, r.dtype).toFixed(2)}`;
  }
  if (r.measure.startsWith("jax-js")) {
    const ours = byKey.get(`${r.shape}|f32|fused forward+backward`);
    if (ours) note = `ours f32 fused = ${(ours / r.ms).toFixed(2)}× jax-js time`;
  }
  console.log(`| ${r.shape} | ${r.dtype} | ${r.measure} | ${r.ms.toFixed(3)} | ${note} |`);
}
console.log(`\nJSON: ${jsonPath}`);
