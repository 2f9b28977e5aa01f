/**
 * QLoRA benchmark (issue 22): one checkpoint loaded dense (f32) and quantized (NF4, or int8), side by side
 * on one device. For each: weight memory (live tensor bytes after loading, and the Linears' share), the
 * logits on one batch (the quantized ones' relative error ||ours − f32|| / ||f32||), and a LoRA training
 * step (r 16 / alpha 32 on q, k, v, o, gate, up and down, AdamW lr 1e-4, batch × seq random tokens) timed
 * over `--steps` after `--warmup`.
 *
 * Usage:
 *   deno run -A bench/qlora_bench.ts --ckpt DIR [--scheme nf4|int8] [--block 64] [--batch 4] [--seq 512]
 *       [--steps 6] [--warmup 2] [--device webgpu|cpu] [--no-train]
 * Prints one JSON line on stdout.
 * @module
 */
import {
  AdamW,
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  cpuDevice,
  detach,
  type Device,
  Linear,
  type Module,
  noGrad,
  PeftConfig,
  type Tensor,
  tidy,
  webgpuDevice,
} from "../mod.ts";

const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map((n) =>
  `*.${n}`
);

const argv = Deno.args;
const get = (k: string) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
const num = (k: string, d: number) => Number(get(k) ?? d);
const ckpt = get("--ckpt");
if (ckpt === undefined) throw new Error("qlora_bench: give --ckpt DIR");
const scheme = (get("--scheme") ?? "nf4") as "nf4" | "int8";
const a = {
  ckpt,
  scheme,
  block: num("--block", 64),
  batch: num("--batch", 4),
  seq: num("--seq", 512),
  steps: num("--steps", 6),
  warmup: num("--warmup", 2),
  device: get("--device") ?? "webgpu",
  train: !argv.includes("--no-train"),
};
const device: Device = a.device === "cpu" ? cpuDevice() : await webgpuDevice();

/** Tokens from a fixed counter hash (the same every run). */
function tokens(n: number, vocab: number, salt: number): Int32Array {
  const t = new Int32Array(n);
  for (let i = 0; i < n; i++) t[i] = (Math.imul(i + salt * 7919, 2654435761) >>> 0) % vocab;
  return t;
}

async function load(quantize: boolean) {
  const before = device.memory().bytes;
  const model = await AutoModelForCausalLM.fromPretrained(a.ckpt, {
    device,
    ...(quantize ? { quantize: { scheme: a.scheme, blockSize: a.block } } : {}),
  });
  await device.sync();
  return { model, bytes: device.memory().bytes - before };
}

async function logits(model: Module, vocab: number): Promise<Float32Array> {
  const ids = {
    data: tokens(a.batch * Math.min(a.seq, 128), vocab, 1),
    shape: [a.batch, Math.min(a.seq, 128)],
  };
  const out = noGrad(() =>
    (model as unknown as { forward(x: unknown): { logits: Tensor } }).forward(ids).logits
  );
  const v = Float32Array.from(await out.data());
  out.dispose();
  return v;
}

/** ms per LoRA training step, and the peak live bytes while stepping. */
async function stepMs(model: Module, vocab: number): Promise<{ ms: number; peak: number; loss: number }> {
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: TARGETS, dim: 16, alpha: 32, dropout: 0 }));
  const opt = new AdamW(model.trainableParameters(), { lr: 1e-4, weightDecay: 0.01 });
  model.train();
  const n = a.batch * a.seq;
  const ids = { data: tokens(n, vocab, 2), shape: [a.batch, a.seq] };
  const f = model as unknown as { forward(x: unknown, o: unknown): { loss: Tensor | null } };
  const step = () =>
    tidy(() => {
      const loss = f.forward(ids, { labels: ids }).loss!;
      loss.backward();
      opt.step();
      opt.zeroGrad();
      return detach(loss);
    });
  for (let i = 0; i < a.warmup; i++) (await step().item(), 0);
  device.resetPeakMemory();
  await device.sync();
  const t = performance.now();
  let last: Tensor | null = null;
  for (let i = 0; i < a.steps; i++) {
    last?.dispose();
    last = step();
  }
  const loss = await last!.item();
  await device.sync();
  return { ms: (performance.now() - t) / a.steps, peak: device.memory().peakBytes, loss };
}

const rec: Record<string, unknown> = { kind: "qlora", ...a, device: String(device) };
// Both loaded before any training, so each memory figure is that model's weights alone.
const dense = await load(false);
const q = await load(true);
const vocab = (dense.model as unknown as { config: { vocabSize: number } }).config.vocabSize;
const ref = await logits(dense.model, vocab);
const ours = await logits(q.model, vocab);
let num2 = 0, den = 0;
for (let i = 0; i < ref.length; i++) {
  num2 += (ours[i] - ref[i]) ** 2;
  den += ref[i] ** 2;
}
// The quantized Linears alone (lm_head stays dense in both).
let qPacked = 0, qDense = 0;
const denseLinears = new Map(dense.model.namedModules());
for (const [name, m] of q.model.namedModules()) {
  if (m instanceof Linear && m.quantization !== null) {
    qPacked += m.weight.size * 4;
    qDense += (denseLinears.get(name) as Linear).weight.size * 4;
  }
}
Object.assign(rec, {
  f32_bytes: dense.bytes,
  q_bytes: q.bytes,
  weight_memory_ratio: +(q.bytes / dense.bytes).toFixed(4),
  quantized_linears_ratio: +(qPacked / qDense).toFixed(4),
  logits_rel_err: +Math.sqrt(num2 / den).toExponential(3),
});
if (a.train) {
  const s = await stepMs(dense.model, vocab);
  Object.assign(rec, { f32_step_ms: +s.ms.toFixed(2), f32_peak_bytes: s.peak, f32_loss: s.loss });
  for (const p of dense.model.parameters()) p.dispose();
  const t = await stepMs(q.model, vocab);
  Object.assign(rec, { q_step_ms: +t.ms.toFixed(2), q_peak_bytes: t.peak, q_loss: t.loss });
  rec.step_ratio = +(t.ms / s.ms).toFixed(3);
}
console.log(JSON.stringify(rec));
