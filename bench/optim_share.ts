/**
 * The optimizer's share of a LoRA training step, the figure issue 12 sets for the software adapter: a
 * SmolLM2-135M-shaped model (hidden 576, intermediate 1536, 9 heads / 3 KV heads, vocab 49152, tied
 * embeddings) cut to `--layers` (default 4), random weights, LoRA r=16 on q, k, v, o, gate, up, down
 * (2 x 7 x layers tensors), AdamW, batch 1 x `--seq` (default 16) tokens. Reports the whole step (forward,
 * backward, AdamW), AdamW alone on the same gradients, and the share; `--per-tensor` also times the
 * previous per-tensor composition (about ten tensor ops per parameter) for comparison.
 *
 * Usage: deno run -A bench/optim_share.ts [--layers 4] [--seq 16] [--steps 5] [--opt-reps 10]
 *   [--dtype f32|f16] [--lora-dtype f32|f16] [--device webgpu|cpu] [--per-tensor] [--clip]
 * `--dtype f16 --lora-dtype f32` is the mixed-precision run: an f16 base with f32 adapters (fused).
 * @module
 */
import {
  AdamW,
  add,
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  clipGradNorm,
  cpuDevice,
  detach,
  div,
  type DType,
  keep,
  mul,
  noGrad,
  PeftConfig,
  sqrt,
  sub,
  type Tensor,
  tidy,
  webgpuDevice,
  zeros,
} from "../mod.ts";

const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map((n) =>
  `*.${n}`
);

function flag(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : fallback;
}

/** The optimizer this library had before the multi-tensor kernel: ~10 tensor ops per parameter. */
function perTensorAdamW(params: Tensor[], lr: number) {
  const [b1, b2, eps, wd] = [0.9, 0.999, 1e-8, 0.01];
  const state = params.map((p) => ({
    step: 0,
    m: keep(zeros(p.shape, { device: p.device, dtype: p.dtype })),
    v: keep(zeros(p.shape, { device: p.device, dtype: p.dtype })),
  }));
  return () =>
    tidy(() =>
      noGrad(() =>
        params.forEach((p, i) => {
          const g = p.grad!, s = state[i];
          s.step += 1;
          const decayed = mul(p, 1 - lr * wd);
          s.m._assign(add(s.m, mul(sub(g, s.m), 1 - b1)));
          s.v._assign(add(mul(s.v, b2), mul(mul(g, 1 - b2), g)));
          const denom = add(div(sqrt(s.v), Math.sqrt(1 - b2 ** s.step)), eps);
          p._assign(add(decayed, div(mul(s.m, -lr / (1 - b1 ** s.step)), denom)));
        })
      )
    );
}

const layers = Number(flag("--layers", "4")), seq = Number(flag("--seq", "16"));
const steps = Number(flag("--steps", "5")), optReps = Number(flag("--opt-reps", "10"));
const dtype = flag("--dtype", "f32") as DType;
const loraDtype = flag("--lora-dtype", dtype) as DType;
const device = flag("--device", "webgpu") === "cpu" ? cpuDevice() : await webgpuDevice();
const config = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: layers,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  vocab_size: 49152,
  tie_word_embeddings: true,
  rope_theta: 100000.0,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  hidden_act: "silu",
};
const model = AutoModelForCausalLM.fromConfig(config, { device, dtype, seed: 0 });
applyLoraToLinearModules(
  model,
  new PeftConfig({ targetModules: TARGETS, dim: 16, alpha: 32, dropout: 0, loraDtype }),
);
const params = model.trainableParameters();
const opt = new AdamW(params, { lr: 1e-4, weightDecay: 0.01 });
const ids = { data: Int32Array.from({ length: seq }, (_, i) => (i * 7919 + 13) % 49152), shape: [1, seq] };
model.train();
const clip = Deno.args.includes("--clip");
const step = (optStep: () => void) =>
  tidy(() => {
    const loss = model.forward(ids, { labels: ids }).loss!;
    loss.backward();
    if (clip) clipGradNorm(params, 1);
    optStep();
    opt.zeroGrad();
    return detach(loss);
  });

async function timeSteps(optStep: () => void): Promise<number> {
  for (let i = 0; i < 2; i++) step(optStep).dispose(); // warm-up: pipelines compiled
  await device.sync();
  const t = performance.now();
  let last: Tensor | null = null;
  for (let i = 0; i < steps; i++) {
    last?.dispose();
    last = step(optStep);
  }
  await last!.item();
  return (performance.now() - t) / steps;
}

/** The optimizer alone on one backward's gradients, `optReps` times. */
async function timeOptimizer(optStep: () => void): Promise<number> {
  tidy(() => {
    const loss = model.forward(ids, { labels: ids }).loss!;
    loss.backward();
    return detach(loss);
  }).dispose();
  await device.sync();
  const t = performance.now();
  for (let i = 0; i < optReps; i++) optStep();
  await device.sync();
  const ms = (performance.now() - t) / optReps;
  opt.zeroGrad();
  return ms;
}

const report = async (name: string, optStep: () => void) => {
  const stepMs = await timeSteps(optStep);
  const optMs = await timeOptimizer(optStep);
  console.log(JSON.stringify({
    optimizer: name,
    device: `${device}`,
    dtype,
    lora_dtype: loraDtype,
    layers,
    seq,
    lora_tensors: params.length,
    step_ms: +stepMs.toFixed(1),
    optimizer_ms: +optMs.toFixed(2),
    optimizer_share: +(optMs / stepMs).toFixed(3),
  }));
};
await report("multi-tensor AdamW", () => opt.step());
if (Deno.args.includes("--per-tensor")) await report("per-tensor ops (before)", perTensorAdamW(params, 1e-4));
if (device.kind === "webgpu") device.destroy();
