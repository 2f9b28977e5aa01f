/**
 * Bytes a training forward keeps for backward, per token per layer (issue 13's figure): a SmolLM2-135M-
 * shaped model (hidden 576, intermediate 1536, 9 heads / 3 KV heads, head dim 64, vocab 49152, tied
 * embeddings) cut to `--layers` (default 4), random weights, LoRA r=16 on q, k, v, o, gate, up, down,
 * training mode, batch `--batch` x `--seq` (default 2 x 128) tokens with labels. Measured as the change of
 * `device.memory().bytes` across `model.forward(ids, { labels })` whose logits are never read (everything
 * the forward leaves alive is what backward would find), divided by tokens x layers. Runs the fused path
 * (causalAttention + linearCrossEntropy) and, with `--eager`, also the composed one for comparison; a
 * backward then checks that the step still completes.
 *
 * Usage: deno run -A bench/forward_memory.ts [--layers 4] [--batch 2] [--seq 128] [--dtype f32|f16]
 *   [--device webgpu|cpu] [--eager]
 * @module
 */
import {
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  cpuDevice,
  type DType,
  PeftConfig,
  tidy,
  webgpuDevice,
} from "../mod.ts";

function flag(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : fallback;
}

const layers = Number(flag("--layers", "4")), batch = Number(flag("--batch", "2"));
const seq = Number(flag("--seq", "128"));
const dtype = flag("--dtype", "f32") as DType;
const device = flag("--device", "webgpu") === "cpu" ? cpuDevice() : await webgpuDevice();
const model = AutoModelForCausalLM.fromConfig({
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
}, { device, dtype, seed: 0 });
const targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map((n) =>
  `*.${n}`
);
applyLoraToLinearModules(model, new PeftConfig({ targetModules: targets, dim: 16, alpha: 32, dropout: 0 }));
model.train();
const tokens = batch * seq;
const ids = {
  data: Int32Array.from({ length: tokens }, (_, i) => (i * 7919 + 13) % 49152),
  shape: [batch, seq],
};

/** Bytes kept per token per layer by one training forward, then a backward to show the step runs. */
async function measure(fused: boolean): Promise<number> {
  model.attnImplementation = fused ? "fused" : "eager";
  model.fusedLoss = fused;
  await device.sync();
  let kept = 0;
  tidy(() => {
    const before = device.memory().bytes;
    const { loss } = model.forward(ids, { labels: ids });
    kept = device.memory().bytes - before;
    loss!.backward();
  });
  for (const p of model.trainableParameters()) p.grad?.dispose(), p.grad = null;
  await device.sync();
  return kept / tokens / layers;
}

const report = (name: string, perTokenLayer: number) =>
  console.log(
    `${name}: ${(perTokenLayer / 1024).toFixed(1)} KB per token per layer ` +
      `(${
        ((perTokenLayer * tokens * layers) / 2 ** 20).toFixed(1)
      } MiB kept for ${batch} x ${seq} tokens, ${layers} layers, ${dtype}, ${device})`,
  );
report("fused", await measure(true));
if (Deno.args.includes("--eager")) report("eager", await measure(false));
