/**
 * Model benchmark: the LoRA training workload of `../shared/bench/torch_lora_train.py` on this library,
 * so the two can run side by side on one GPU. LoRA r=16 / alpha 32 (dropout 0) on q, k, v, o, gate, up
 * and down, AdamW lr 1e-4 (weight decay 0.01, betas 0.9/0.999, eps 1e-8, as torch's defaults), token ids
 * from the same counter hash as the PyTorch script's `random_tokens()`, so first-step f32 losses agree on
 * the same checkpoint (the LoRA B matrices start at zero, so the first loss is the base model's). LoRA A
 * is drawn as PEFT draws it (kaiming-uniform, a = √5), not with NeMo's xavier default, so later losses
 * follow PyTorch's closely (not exactly: the random A values differ).
 *
 * Usage:
 *   deno run -A bench/model_bench.ts --ckpt DIR [--name NAME] [--batch 8] [--seq 512] [--steps 20]
 *       [--warmup 3] [--log-every 5] [--dtype f32|f16] [--lora-dtype f32|f16] [--device webgpu|cpu] [--seed 1234] [--no-split]
 *       [--opt-reps 10] [--profile] [--profile-detail]
 *   deno run -A bench/model_bench.ts --quick      (CI: a 2-layer SmolLM2-shaped model made in JS with
 *                                                  random weights, 1 x 16 tokens, 3 steps; any adapter)
 *   --generate                                    (then greedy generation tokens/s: bench/generate_bench.ts)
 *
 * Prints one JSON line per workload on stdout ({"kind": "train", "impl": "lora-webgpu", ...}) with ms per
 * step, tokens/s, peak memory (live tensor bytes, like torch's max_memory_allocated), and where a step
 * goes: forward alone, forward + backward, the optimizer alone (then backward = the difference). Timing
 * as the PyTorch script does: warm-up steps first, losses read every `--log-every` steps (one await), the
 * device synchronised before and after the timed steps.
 * @module
 */
import {
  AdamW,
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  detach,
  type DType,
  noGrad,
  PeftConfig,
  profile,
  type Tensor,
  tidy,
  webgpuDevice,
} from "../mod.ts";
import { cpuDevice } from "../mod.ts";
import { generateBench } from "./generate_bench.ts";
import type { WebGpuBackend } from "../src/backend/webgpu/backend.ts";
import { QUICK_CONFIG } from "./quick_model.ts";

// PEFT's target_modules match a name's last part; our patterns match whole dotted names.
const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map((n) =>
  `*.${n}`
);

/** lowbias32, the hash of torch_lora_train.py's `hash32` (uint32 arithmetic). */
function hash32(v: number): number {
  let x = v >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/** The ids of torch_lora_train.py's `random_tokens(seed, offset, n, vocab)`. */
export function randomTokens(seed: number, offset: number, n: number, vocab: number): Int32Array {
  const base = Math.imul(seed, 0x9e3779b1) >>> 0;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = hash32((i + base + offset) >>> 0) % vocab;
  return out;
}

interface Args {
  ckpt: string | null;
  name: string;
  batch: number;
  seq: number;
  steps: number;
  warmup: number;
  logEvery: number;
  dtype: DType;
  /** LoRA weights' dtype (default: the base's); f32 over an f16 base is the mixed-precision case. */
  loraDtype: DType | undefined;
  device: "webgpu" | "cpu";
  seed: number;
  split: boolean;
  /** Optimizer steps timed for the optimizer's figure (torch_lora_train.py times 10). */
  optReps: number;
  /** Profile one training step with profile() and add its slowest rows to the record. */
  profile: boolean;
  /** With --profile-detail: the profile's rows per kernel and shape (GEMM m x n x k and plan). */
  profileDetail: boolean;
  generate: boolean;
  quick: boolean;
}

function parseArgs(argv: string[]): Args {
  const get = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string, fallback: number) => Number(get(name) ?? fallback);
  const quick = argv.includes("--quick");
  const ckpt = get("--ckpt") ?? null;
  if (!quick && ckpt === null) throw new Error("model_bench: give --ckpt DIR (or --quick)");
  return {
    ckpt,
    name: get("--name") ??
      (ckpt === null ? "smollm2-shape-2l-quick" : ckpt.replace(/\/+$/, "").split("/").pop()!),
    batch: num("--batch", quick ? 1 : 8),
    seq: num("--seq", quick ? 16 : 512),
    steps: num("--steps", quick ? 3 : 20),
    warmup: num("--warmup", quick ? 1 : 3),
    logEvery: num("--log-every", 5),
    dtype: (get("--dtype") ?? "f32") as DType,
    loraDtype: get("--lora-dtype") as DType | undefined,
    device: (get("--device") ?? "webgpu") as "webgpu" | "cpu",
    seed: num("--seed", 1234),
    split: !argv.includes("--no-split"),
    optReps: num("--opt-reps", 10),
    profile: argv.includes("--profile") || argv.includes("--profile-detail"),
    profileDetail: argv.includes("--profile-detail"),
    generate: argv.includes("--generate"),
    quick,
  };
}

async function main(): Promise<void> {
  const a = parseArgs(Deno.args);
  const device = a.device === "cpu" ? cpuDevice() : await webgpuDevice();
  const rec: Record<string, unknown> = {
    kind: "train",
    impl: "lora-webgpu",
    model: a.name,
    ckpt: a.ckpt,
    mode: a.dtype === "f32" ? "fp32" : a.dtype,
    dtype: a.dtype,
    lora_dtype: a.loraDtype ?? a.dtype,
    device: `${device}`,
    batch: a.batch,
    seq: a.seq,
    steps: a.steps,
    warmup: a.warmup,
    rank: 16,
    alpha: 32,
    lr: 1e-4,
    log_every: a.logEvery,
    error: null,
    error_phase: null,
  };
  let phase = "load";
  try {
    let t = performance.now();
    const model = a.ckpt === null
      ? AutoModelForCausalLM.fromConfig(QUICK_CONFIG, { device, dtype: a.dtype, seed: 0 })
      : await AutoModelForCausalLM.fromPretrained(a.ckpt, { device, dtype: a.dtype });
    await device.sync();
    rec.load_s = +((performance.now() - t) / 1000).toFixed(3);
    rec.params = model.parameters().reduce((s, p) => s + p.size, 0);

    phase = "lora";
    t = performance.now();
    applyLoraToLinearModules(
      model,
      new PeftConfig({
        targetModules: TARGETS,
        dim: 16,
        alpha: 32,
        dropout: 0,
        loraAInit: "kaiming",
        ...(a.loraDtype === undefined ? {} : { loraDtype: a.loraDtype }),
      }),
    );
    const params = model.trainableParameters();
    rec.trainable_params = params.reduce((s, p) => s + p.size, 0);
    const opt = new AdamW(params, { lr: 1e-4, weightDecay: 0.01 });
    rec.lora_s = +((performance.now() - t) / 1000).toFixed(3);

    phase = "data";
    const vocab = (model as unknown as { config: { vocabSize: number } }).config.vocabSize;
    const bt = a.batch * a.seq;
    const batches = [0, 1, 2, 3].map((k) => ({
      data: randomTokens(a.seed, k * bt, bt, vocab),
      shape: [a.batch, a.seq],
    }));
    model.train();
    const losses: number[] = [];
    const forwardLoss = (ids: { data: Int32Array; shape: number[] }): Tensor => {
      const out = model.forward(ids, { labels: ids });
      if (out.loss === null) throw new Error("the model returned no loss");
      return out.loss;
    };
    const steps = async (start: number, count: number, logEvery: number) => {
      let pending: Tensor[] = [];
      for (let s = start; s < start + count; s++) {
        const ids = batches[s % batches.length];
        pending.push(tidy(() => {
          const loss = forwardLoss(ids);
          loss.backward();
          opt.step();
          opt.zeroGrad();
          return detach(loss);
        }));
        if ((s - start + 1) % logEvery === 0 || s === start + count - 1) {
          for (const l of pending) losses.push(await l.item()); // the first read waits; the rest are done
          for (const l of pending) l.dispose();
          pending = [];
          console.error(`[model_bench ${a.name}] step ${s + 1}/${a.steps} loss ${losses.at(-1)!.toFixed(4)}`);
        }
      }
    };

    phase = "warmup";
    t = performance.now();
    await steps(0, a.warmup, Math.max(a.warmup, 1));
    await device.sync();
    rec.warmup_s = +((performance.now() - t) / 1000).toFixed(3);

    phase = "train";
    const timed = a.steps - a.warmup;
    const rt = device.kind === "webgpu" ? (device.backend as WebGpuBackend).rt : null;
    const madeBefore = rt?.bindGroupsMade ?? 0;
    device.resetPeakMemory();
    await device.sync();
    t = performance.now();
    await steps(a.warmup, timed, Math.min(a.logEvery || timed, timed));
    await device.sync();
    const el = performance.now() - t;
    const mem = device.memory();
    rec.ms_per_step = +(el / timed).toFixed(2);
    rec.tokens_per_s = +((bt * timed) / (el / 1000)).toFixed(1);
    rec.losses = losses.map((x) => +x.toFixed(5));
    rec.first_loss = rec.losses && losses.length > 0 ? +losses[0].toFixed(5) : null;
    rec.final_loss = losses.length > 0 ? +losses.at(-1)!.toFixed(5) : null;
    rec.loss_finite = losses.every(Number.isFinite);
    if (rt !== null) rec.bind_groups_made_per_step = Math.round((rt.bindGroupsMade - madeBefore) / timed);
    rec.max_memory_allocated = mem.peakBytes;
    rec.memory_allocated_after_train = mem.bytes;
    rec.pooled_bytes_after_train = mem.pooledBytes;

    if (a.split) {
      // Where a step goes, as the PyTorch script measures it: the forward alone (no graph kept), forward
      // plus backward, and the optimizer alone on one backward's gradients.
      phase = "breakdown";
      const ids = batches[0];
      const reps = 3;
      await device.sync();
      t = performance.now();
      for (let i = 0; i < reps; i++) noGrad(() => tidy(() => detach(forwardLoss(ids)))).dispose();
      await device.sync();
      rec.fwd_ms = +((performance.now() - t) / reps).toFixed(2);
      t = performance.now();
      for (let i = 0; i < reps; i++) {
        tidy(() => {
          const loss = forwardLoss(ids);
          loss.backward();
          return detach(loss);
        }).dispose();
        if (i < reps - 1) opt.zeroGrad();
      }
      await device.sync();
      rec.fwd_bwd_ms = +((performance.now() - t) / reps).toFixed(2);
      rec.bwd_ms = +((rec.fwd_bwd_ms as number) - (rec.fwd_ms as number)).toFixed(2);
      t = performance.now();
      for (let i = 0; i < a.optReps; i++) tidy(() => opt.step());
      await device.sync();
      rec.adamw_ms = +((performance.now() - t) / a.optReps).toFixed(2);
      opt.zeroGrad();
    }
    if (a.profile) {
      phase = "profile";
      const p = await profile(() => {
        tidy(() => {
          const loss = forwardLoss(batches[0]);
          loss.backward();
          opt.step();
          opt.zeroGrad();
        });
      }, { device, detail: a.profileDetail });
      console.error(p.toString());
      rec.profile = {
        timing: p.timing,
        total_ms: +p.totalMs.toFixed(2),
        measured_ms: +p.measuredMs.toFixed(2),
        dispatches: p.rows.reduce((s, r) => s + r.calls, 0),
        rows: p.rows.slice(0, a.profileDetail ? 80 : 30).map((r) => ({
          name: r.name,
          calls: r.calls,
          ms: +r.ms.toFixed(3),
        })),
      };
    }
    console.log(JSON.stringify(rec));
    if (a.generate) { for (const r of await generateBench(model, device, a)) console.log(JSON.stringify(r)); }
  } catch (e) {
    rec.error = `${(e as Error).name}: ${(e as Error).message}`.slice(0, 2000);
    rec.error_phase = phase;
    console.error(e);
    console.log(JSON.stringify(rec));
    Deno.exitCode = 1; // CI runs --quick: a failing bench must fail the step
  }
  if (device.kind === "webgpu") device.destroy();
}

if (import.meta.main) await main();
