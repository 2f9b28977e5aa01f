/**
 * Which device to train on: one LoRA training step (forward, backward, AdamW) of random Llama models of a
 * few sizes, on the CPU reference and on the WebGPU adapter this machine has (a software one such as
 * lavapipe on a machine without a GPU). The README's "which device?" paragraph quotes its output.
 *
 * Each size: a warm-up run of `--warmup` steps (the software adapter compiles each kernel on first use),
 * then `--steps` timed steps through `train()` (losses read back every `logEvery` steps, as a user's run
 * does); the figure is the mean wall-clock time per timed step.
 *
 * Usage: deno run -A bench/device_crossover.ts [--sizes tiny,small,medium,large] [--steps N] [--warmup N]
 *        [--batch B] [--seq S] [--devices cpu,webgpu]
 */
import {
  AdamW,
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  cpuDevice,
  type Device,
  PeftConfig,
  train,
  webgpuDevice,
} from "../mod.ts";

/** Model sizes: the demo's tiny Llama, then wider and deeper ones up to ~45M parameters. */
const SIZES: Record<string, { hidden: number; inter: number; layers: number; heads: number; vocab: number }> =
  {
    tiny: { hidden: 64, inter: 128, layers: 2, heads: 4, vocab: 256 }, // the demo's base model
    small: { hidden: 256, inter: 512, layers: 4, heads: 4, vocab: 2048 },
    medium: { hidden: 512, inter: 1024, layers: 6, heads: 8, vocab: 4096 },
    large: { hidden: 768, inter: 2048, layers: 6, heads: 12, vocab: 8192 },
  };

function flag(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

const sizes = flag("sizes", "tiny,small,medium,large").split(",");
const steps = Number(flag("steps", "5"));
const warmup = Number(flag("warmup", "2"));
const batch = Number(flag("batch", "4"));
const seq = Number(flag("seq", "64"));
const deviceNames = flag("devices", "cpu,webgpu").split(",");

/** Seconds per training step of the model `size` on `device`, and its parameter count. */
async function stepSeconds(size: string, device: Device): Promise<{ seconds: number; params: number }> {
  const s = SIZES[size];
  const model = AutoModelForCausalLM.fromConfig({
    architectures: ["LlamaForCausalLM"],
    vocab_size: s.vocab,
    hidden_size: s.hidden,
    intermediate_size: s.inter,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.heads,
    max_position_embeddings: Math.max(64, seq),
  }, { device, seed: 0 });
  const params = model.parameters().reduce((n, p) => n + p.size, 0);
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*_proj"], dim: 8, alpha: 16 }));
  const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-3 });
  const ids = Array.from(
    { length: batch },
    (_, b) => Array.from({ length: seq }, (_, i) => (b * 31 + i * 7) % s.vocab),
  );
  const batches = [{ inputIds: ids }];
  await train({ model, optimizer, batches, steps: warmup, logEvery: warmup });
  const t0 = performance.now();
  // Losses are read back every 5 steps (once for 3 steps), as in a user's run; each read waits on the device.
  await train({ model, optimizer, batches, steps, logEvery: Math.min(5, steps) });
  const seconds = (performance.now() - t0) / 1000 / steps;
  for (const p of model.parameters()) p.dispose();
  return { seconds, params };
}

const devices: [string, Device][] = [];
for (const name of deviceNames) {
  devices.push([name, name === "cpu" ? cpuDevice() : await webgpuDevice()]);
}
console.log(`batch ${batch} x seq ${seq}, LoRA r=8 on every *_proj, ${steps} timed steps after ${warmup}`);
for (const [name, d] of devices) console.log(`${name}: ${d}`);
for (const size of sizes) {
  const row: string[] = [];
  let params = 0;
  for (const [name, device] of devices) {
    const r = await stepSeconds(size, device);
    params = r.params;
    row.push(`${name} ${(r.seconds * 1000).toFixed(0)} ms/step`);
  }
  console.log(`${size} (${(params / 1e6).toFixed(2)}M params): ${row.join(", ")}`);
}
