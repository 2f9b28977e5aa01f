/**
 * Multi-adapter serving benchmark (issue 19, "Many adapters at once"): a batch of 8 rows spread over 4
 * LoRA adapters (PEFT's `adapterNames`, the mixed-batch kernel lora_rows on WebGPU) against the same batch
 * on one adapter, for a forward over the whole prompt, for greedy generation and for a training step (the
 * loss over the batch, its backward into every adapter used, then AdamW over the trained adapters); and
 * the time of a hot swap (`hotswapAdapter`) of one adapter with the device's live bytes before and after.
 *
 * Every adapter has rank `--rank` (default 16) on all seven projections (q, k, v, o, gate, up, down), as
 * the issue's SmolLM2-135M target says. The single-adapter figures are taken two ways: "single" runs
 * the active adapter (the fused LoRA linear of one adapter), "single-rows" runs the mixed-batch path with
 * every row naming the same adapter; "mixed" names a0 a1 a2 a3 a0 a1 a2 a3. Each forward waits for the
 * device (no logits read back); each figure is the median of `--iters` runs after two warm-ups. Training
 * runs in eval mode (PEFT allows `adapterNames` there only; the adapters have no dropout, so eval and
 * training mode compute the same), every adapter trainable: "single" trains a0 on all 8 rows, "mixed"
 * trains a0-a3 on 2 rows each (AdamW then updates 4 adapters' weights instead of 1: the "step" figure
 * holds that, "fwd_bwd" is the loss and gradients alone); "separate" is what training the four without
 * mixed batches costs: each adapter active in turn on its own 2 rows (loss and gradients).
 *
 * Usage:
 *   deno run -A bench/multi_adapter_bench.ts --ckpt DIR [--dtype f32|f16] [--rank 16] [--prompt 32]
 *       [--gen 32] [--iters 10] [--device webgpu|cpu] [--profile] [--gemv]
 *   deno run -A bench/multi_adapter_bench.ts --quick   (2-layer SmolLM2-shaped random model, CI size)
 *
 * `--gemv` makes the decoding step use its GEMV kernels on a software adapter too (lavapipe; hardware
 * GPUs use them anyway), to count a step's dispatches locally.
 *
 * Prints one JSON line per measurement: {"kind": "multi_adapter", "what": "forward" | "generate" |
 * "train" | "hotswap", "case", "ms", ...} and a summary line with the mixed / single ratios (generation's
 * also right after its figures, "generate_summary"). A generation figure is the whole call (prefill and
 * `--gen` tokens), `decode_ms_per_step` the decoding steps alone (the call minus the same call with 2
 * new tokens, per extra token), `dispatches_per_step` the kernels one step dispatches (two profiled
 * calls, 6 and 2 new tokens). `--profile` also prints, per kernel, one mixed-batch generation and where
 * one mixed-batch training step (loss and gradients) spends its time.
 * @module
 */
import {
  AdamW,
  AutoModelForCausalLM,
  cpuDevice,
  detach,
  type DType,
  type GenerateOptions,
  getPeftModel,
  LoraConfig,
  noGrad,
  type PeftModel,
  profile,
  type Tensor,
  tidy,
  webgpuDevice,
} from "../mod.ts";
import { QUICK_CONFIG } from "./quick_model.ts";
import { generateTokens } from "../src/models/generate.ts";

const PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
const BATCH = 8;
const ADAPTERS = 4;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const argv = Deno.args;
  const get = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const quick = argv.includes("--quick");
  const ckpt = get("--ckpt") ?? null;
  if (!quick && ckpt === null) throw new Error("multi_adapter_bench: give --ckpt DIR (or --quick)");
  const dtype = (get("--dtype") ?? "f32") as DType;
  const device = get("--device") === "cpu" ? cpuDevice() : await webgpuDevice();
  const rank = Number(get("--rank") ?? 16);
  const promptLen = Number(get("--prompt") ?? (quick ? 8 : 32));
  const gen = Number(get("--gen") ?? (quick ? 4 : 32));
  const iters = Number(get("--iters") ?? (quick ? 3 : 10));
  const name = ckpt === null ? "smollm2-shape-2l-quick" : ckpt.replace(/\/+$/, "").split("/").pop()!;
  const model = ckpt === null
    ? AutoModelForCausalLM.fromConfig(QUICK_CONFIG, { device, dtype, seed: 0 })
    : await AutoModelForCausalLM.fromPretrained(ckpt, { device, dtype });
  const vocab = (model as unknown as { config: { vocabSize: number } }).config.vocabSize;
  if (argv.includes("--gemv")) {
    // The decoding step's GEMV kernels even on a software adapter (which otherwise runs the layers' own
    // forward): for counting a step's dispatches locally (lavapipe) as the H200 runs them.
    const m = model as unknown as Parameters<typeof generateTokens>[0] & { generate: unknown };
    m.generate = (p: number[][], o: GenerateOptions) => generateTokens(m, p, o, { gemv: true });
  }

  // Four adapters with non-zero B (PEFT's init_lora_weights=False), so every row really runs its adapter.
  const config = () =>
    new LoraConfig({ r: rank, loraAlpha: 2 * rank, targetModules: PROJECTIONS, initLoraWeights: false });
  const pm = getPeftModel(model, config(), { adapterName: "a0" }) as PeftModel;
  for (let i = 1; i < ADAPTERS; i++) pm.addAdapter(`a${i}`, config());
  pm.setAdapter("a0", { inferenceMode: true });
  pm.eval();

  const ids = Array.from(
    { length: BATCH },
    (_, r) => Array.from({ length: promptLen }, (_, j) => (r * 131 + j * 17 + 1) % vocab),
  );
  const cases: [string, string[] | undefined][] = [
    ["single", undefined],
    ["single-rows", Array(BATCH).fill("a0")],
    ["mixed", Array.from({ length: BATCH }, (_, r) => `a${r % ADAPTERS}`)],
  ];
  const base = { kind: "multi_adapter", impl: "lora-webgpu", model: name, device: device.kind, dtype, rank };
  const results: Record<string, Record<string, number>> = {
    forward: {},
    generate: {},
    decode: {},
    dispatches: {},
    train: {},
    step: {},
  };

  for (const [label, adapterNames] of cases) {
    const times: number[] = [];
    for (let i = 0; i < iters + 2; i++) {
      const t0 = performance.now();
      const out = noGrad(() => pm.forward(ids, adapterNames ? { adapterNames } : {})) as {
        logits: { dispose(): void };
      };
      const logits = out.logits;
      await device.sync();
      if (i >= 2) times.push(performance.now() - t0);
      logits.dispose();
    }
    results.forward[label] = median(times);
    console.log(JSON.stringify({
      ...base,
      what: "forward",
      case: label,
      batch: BATCH,
      prompt_len: promptLen,
      ms: results.forward[label],
    }));
  }

  // Generation: the whole call (prefill + gen tokens) and, from the same call with 2 new tokens, the
  // decoding steps alone; dispatches per step from two profiled calls (gen and 2 new tokens).
  const dispatchCalls = async (opts: Record<string, unknown>, n: number) => {
    const p = await profile(() => pm.generate(ids, { ...opts, maxNewTokens: n }), { device });
    return { calls: p.rows.reduce((a, r) => a + r.calls, 0), p };
  };
  const genShort = 2;
  for (const [label, adapterNames] of cases) {
    const opts = { maxNewTokens: gen, eosTokenId: null, ...(adapterNames ? { adapterNames } : {}) };
    await pm.generate(ids, { ...opts, maxNewTokens: genShort }); // compiles the decoding pipelines
    const times: number[] = [], shortTimes: number[] = [];
    for (let i = 0; i < Math.max(1, Math.ceil(iters / 3)); i++) {
      let t0 = performance.now();
      await pm.generate(ids, opts);
      times.push(performance.now() - t0);
      t0 = performance.now();
      await pm.generate(ids, { ...opts, maxNewTokens: genShort });
      shortTimes.push(performance.now() - t0);
    }
    results.generate[label] = median(times);
    const stepMs = gen > genShort ? (median(times) - median(shortTimes)) / (gen - genShort) : NaN;
    results.decode[label] = stepMs;
    const few = Math.min(gen, genShort + 4);
    const long = await dispatchCalls(opts, few), short = await dispatchCalls(opts, genShort);
    results.dispatches[label] = few > genShort ? (long.calls - short.calls) / (few - genShort) : NaN;
    console.log(JSON.stringify({
      ...base,
      what: "generate",
      case: label,
      batch: BATCH,
      prompt_len: promptLen,
      new_tokens: gen,
      ms: results.generate[label],
      ms_per_step: results.generate[label] / gen,
      decode_ms_per_step: stepMs,
      dispatches_per_step: results.dispatches[label],
    }));
    if (argv.includes("--profile") && label === "mixed") {
      console.log(`profile of a mixed-batch generation of ${few} new tokens (${device.kind}):\n${long.p}`);
    }
  }
  // Printed now, so the generation figures survive a run cut short later.
  console.log(JSON.stringify({
    ...base,
    what: "generate_summary",
    generate_mixed_over_single: results.generate.mixed / results.generate.single,
    decode_step_mixed_over_single: results.decode.mixed / results.decode.single,
    dispatches_per_step: results.dispatches,
    target: 1.3,
  }));

  // Training: the model's loss with labels = ids, backward into every trainable adapter the rows use.
  const weightsOf = (n: string) => pm.adapterLayers(n).flatMap(([, a]) => [a.lora_A.weight, a.lora_B.weight]);
  for (let i = 0; i < ADAPTERS; i++) for (const w of weightsOf(`a${i}`)) w.requiresGrad = true;
  const trainIters = Math.max(3, Math.ceil(iters / 2));
  for (const [label, adapterNames] of cases) {
    const used = adapterNames ? [...new Set(adapterNames)] : ["a0"];
    const opt = new AdamW(used.flatMap(weightsOf), { lr: 1e-4, weightDecay: 0.01 });
    const lossOf = (): Tensor => {
      const out = pm.forward(ids, { labels: ids, ...(adapterNames ? { adapterNames } : {}) }) as {
        loss: Tensor;
      };
      return out.loss;
    };
    const gradTimes: number[] = [], stepTimes: number[] = [];
    let lastLoss = NaN;
    for (let i = 0; i < trainIters + 2; i++) {
      let t0 = performance.now();
      const loss = tidy(() => {
        const l = lossOf();
        l.backward();
        return detach(l);
      });
      await device.sync();
      if (i >= 2) gradTimes.push(performance.now() - t0);
      opt.zeroGrad();
      loss.dispose();
      t0 = performance.now();
      const l2 = tidy(() => {
        const l = lossOf();
        l.backward();
        opt.step();
        opt.zeroGrad();
        return detach(l);
      });
      await device.sync();
      if (i >= 2) stepTimes.push(performance.now() - t0);
      lastLoss = await l2.item();
      l2.dispose();
    }
    if (argv.includes("--profile") && label === "mixed") {
      const p = await profile(() => {
        tidy(() => lossOf().backward());
        opt.zeroGrad();
      }, { device });
      console.log(`profile of one mixed-batch loss + backward (${device.kind}):\n${p.toString()}`);
    }
    opt.dispose();
    results.train[label] = median(gradTimes);
    results.step[label] = median(stepTimes);
    console.log(JSON.stringify({
      ...base,
      what: "train",
      case: label,
      batch: BATCH,
      prompt_len: promptLen,
      adapters_trained: used.length,
      fwd_bwd_ms: results.train[label],
      step_ms: results.step[label],
      loss: lastLoss,
    }));
  }
  // Without mixed batches: each adapter trained on its own 2 rows in turn (4 passes of 2 rows, the active
  // adapter's fused path), loss and gradients only.
  {
    const sepTimes: number[] = [];
    const groups = Array.from({ length: ADAPTERS }, (_, a) => ids.filter((_, r) => r % ADAPTERS === a));
    for (let i = 0; i < trainIters + 2; i++) {
      const t0 = performance.now();
      for (let a = 0; a < ADAPTERS; a++) {
        pm.setAdapter(`a${a}`);
        const rows = groups[a];
        tidy(() => (pm.forward(rows, { labels: rows }) as { loss: Tensor }).loss.backward());
      }
      await device.sync();
      if (i >= 2) sepTimes.push(performance.now() - t0);
      for (let a = 0; a < ADAPTERS; a++) {
        for (const w of weightsOf(`a${a}`)) {
          w.grad?.dispose();
          w.grad = null;
        }
      }
    }
    pm.setAdapter("a0", { inferenceMode: true });
    results.train.separate = median(sepTimes);
    console.log(JSON.stringify({
      ...base,
      what: "train",
      case: "separate",
      batch: BATCH,
      prompt_len: promptLen,
      adapters_trained: ADAPTERS,
      fwd_bwd_ms: results.train.separate,
    }));
  }
  for (let i = 0; i < ADAPTERS; i++) for (const w of weightsOf(`a${i}`)) w.requiresGrad = false;

  // Hot swap: a3's weights (saved in PEFT's format, held in memory) into a0; the files are parsed inside
  // the timed call, as a server receiving an adapter would.
  const dir = await Deno.makeTempDir();
  try {
    await pm.saveAdapter(dir, { selectedAdapters: ["a3"] });
    const files = {
      "adapter_model.safetensors": await Deno.readFile(`${dir}/a3/adapter_model.safetensors`),
      "adapter_config.json": await Deno.readTextFile(`${dir}/a3/adapter_config.json`),
    };
    const times: number[] = [];
    const bytesBefore = device.memory().bytes;
    for (let i = 0; i < iters + 1; i++) {
      const t0 = performance.now();
      await pm.hotswapAdapter(files, "a0");
      await device.sync();
      if (i >= 1) times.push(performance.now() - t0);
    }
    console.log(JSON.stringify({
      ...base,
      what: "hotswap",
      case: "a3 into a0",
      weights_bytes: files["adapter_model.safetensors"].byteLength,
      ms: median(times),
      live_bytes_before: bytesBefore,
      live_bytes_after: device.memory().bytes,
    }));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  console.log(JSON.stringify({
    ...base,
    what: "summary",
    forward_mixed_over_single: results.forward.mixed / results.forward.single,
    forward_mixed_over_single_rows: results.forward.mixed / results.forward["single-rows"],
    generate_mixed_over_single: results.generate.mixed / results.generate.single,
    generate_mixed_over_single_rows: results.generate.mixed / results.generate["single-rows"],
    decode_step_mixed_over_single: results.decode.mixed / results.decode.single,
    train_fwd_bwd_mixed_over_single: results.train.mixed / results.train.single,
    train_fwd_bwd_mixed_over_single_rows: results.train.mixed / results.train["single-rows"],
    train_step_mixed_over_single: results.step.mixed / results.step.single,
    train_fwd_bwd_mixed_over_separate: results.train.mixed / results.train.separate,
    target: 1.3,
  }));
}

if (import.meta.main) await main();
