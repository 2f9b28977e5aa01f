/**
 * Generation benchmark (issue 14, "Generation without a GPU wait per token"): greedy decoding tokens/s at
 * batch 1 and 8 with the device loop (`generate`: tokens chosen on the device, read back every
 * `--read-every` steps) and, for the figure before, the reference loop (`generateTokensReference`:
 * logits read back and chosen on the host every token, a concatenated cache). transformers' figure comes
 * from ../shared/bench/torch_lora_train.py in the same run (its `"kind": "generate"` line: batch 1,
 * greedy, the same 32-token prompt of `random_tokens(seed + 1, 0, 32, vocab)` and 128 new tokens).
 *
 * Usage:
 *   deno run -A bench/generate_bench.ts --ckpt DIR [--name NAME] [--batch 1,8] [--prompt 32] [--gen 128]
 *       [--read-every 16] [--dtype f32|f16] [--device webgpu|cpu] [--seed 1234] [--reference]
 *       [--layers N]   (keep the first N decoder layers of the checkpoint's config, random weights)
 *       [--quant nf4|int8]   (the decoder's Linears quantized, blocks of 64; the LM head stays)
 *       [--lora R]     (LoRA of rank R on q,k,v,o,gate,up,down, B random, not merged: a PEFT model's decode)
 *       [--profile | --profile-detail]   (dispatches per step and the kernels' profile rows)
 *       [--gemv]       (the GEMV kernels even on a software adapter, e.g. to count their dispatches)
 *       [--no-fuse-norm]   (each RMSNorm its own dispatch instead of fused into the GEMVs after it)
 *   deno run -A bench/generate_bench.ts --quick   (CI size: 2-layer SmolLM2-shaped random model)
 *   bench/model_bench.ts --generate runs the same measurement after its training run.
 *
 * Prints one JSON line per (loop, batch): {"kind": "generate", "impl": "lora-webgpu", "loop": "device" |
 * "reference", "batch", "prompt_len", "new_tokens", "tokens_per_s" (new tokens of all rows per second),
 * "steps_per_s", "ms_per_token" (per step), "first_new_tokens"}. A short generation first compiles the
 * pipelines; the timed one runs without an early stop, as the PyTorch script's min_new_tokens does.
 * @module
 */
import {
  AutoModelForCausalLM,
  cpuDevice,
  type Device,
  type DType,
  getPeftModel,
  LoraConfig,
  mergeAndUnload,
  type Module,
  profile,
  webgpuDevice,
} from "../mod.ts";
import { generateTokens, generateTokensReference } from "../src/models/generate.ts";
import type { DecodeKernels } from "../src/models/decode.ts";
import { QUICK_CONFIG } from "./quick_model.ts";

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

/** The ids of torch_lora_train.py's `random_tokens(seed, offset, n, vocab)`, as numbers. */
function promptTokens(seed: number, offset: number, n: number, vocab: number): number[] {
  const base = Math.imul(seed, 0x9e3779b1) >>> 0;
  return Array.from({ length: n }, (_, i) => hash32((i + base + offset) >>> 0) % vocab);
}

/** What one generation measurement needs. */
export interface GenerateBenchOptions {
  /** A model that generates (a Llama-family causal LM). */
  model: {
    config: { vocabSize: number; numHiddenLayers: number };
    forwardStep: Parameters<typeof generateTokens>[0]["forwardStep"];
  };
  device: Device;
  name: string;
  batches: number[];
  prompt: number;
  gen: number;
  readEvery: number;
  seed: number;
  /** Also time the reference loop (the figure before the device loop). */
  reference: boolean;
  /**
   * Also profile the device loop: dispatches per decoding step (the calls of a generation of `gen`
   * tokens less those of one token, over gen − 1) and, with `detail`, the kernels' rows per shape.
   */
  profile?: { detail: boolean } | null;
  /** Pins the step's kernels (`--gemv`: the GEMV path on a software adapter too, to count its dispatches). */
  kernels?: DecodeKernels;
}

/** Dispatches per decoding step and the profile rows of one device-loop generation (`--profile`). */
async function profileSteps(o: GenerateBenchOptions, prompts: number[][]): Promise<Record<string, unknown>> {
  const gen = (n: number) => () =>
    generateTokens(
      o.model,
      prompts,
      { maxNewTokens: n, eosTokenId: null, readEvery: o.readEvery },
      o.kernels,
    );
  const one = await profile(gen(1), { device: o.device });
  const all = await profile(gen(o.gen), { device: o.device, detail: o.profile?.detail === true });
  const calls = (rows: { calls: number }[]) => rows.reduce((s, r) => s + r.calls, 0);
  const steps = Math.max(1, o.gen - 1);
  return {
    dispatches_per_step: +((calls(all.rows) - calls(one.rows)) / steps).toFixed(1),
    profile_timing: all.timing,
    profile_ms_per_step: +(all.measuredMs / o.gen).toFixed(3),
    profile_rows: all.rows.slice(0, 16).map((r) =>
      `${r.name} calls ${r.calls} ms ${r.ms.toFixed(3)} (${
        (1000 * r.ms / Math.max(1, r.calls)).toFixed(1)
      } us each)`
    ),
  };
}

/** Times greedy generation per (loop, batch); returns one record each. */
export async function generateRecords(o: GenerateBenchOptions): Promise<Record<string, unknown>[]> {
  const vocab = o.model.config.vocabSize;
  const out: Record<string, unknown>[] = [];
  const loops = o.reference ? ["device", "reference"] as const : ["device"] as const;
  for (const batch of o.batches) {
    // Row 0 is the PyTorch script's prompt; the other rows continue the same stream.
    const prompts = Array.from(
      { length: batch },
      (_, r) => promptTokens(o.seed + 1, r * o.prompt, o.prompt, vocab),
    );
    for (const loop of loops) {
      const rec: Record<string, unknown> = {
        kind: "generate",
        impl: "lora-webgpu",
        model: o.name,
        loop,
        device: `${o.device}`,
        batch,
        prompt_len: o.prompt,
        new_tokens: o.gen,
        read_every: loop === "device" ? o.readEvery : 1,
        error: null,
      };
      try {
        const run = (n: number) =>
          loop === "device"
            ? generateTokens(
              o.model,
              prompts,
              { maxNewTokens: n, eosTokenId: null, readEvery: o.readEvery },
              o.kernels,
            )
            : generateTokensReference(o.model, prompts, { maxNewTokens: n, eosTokenId: null });
        await run(Math.min(4, o.gen));
        await o.device.sync();
        const t = performance.now();
        const toks = await run(o.gen);
        await o.device.sync();
        const s = (performance.now() - t) / 1000;
        rec.gen_s = +s.toFixed(3);
        rec.tokens_per_s = +((batch * o.gen) / s).toFixed(2);
        rec.steps_per_s = +(o.gen / s).toFixed(2);
        rec.ms_per_token = +((s * 1000) / o.gen).toFixed(2);
        rec.first_new_tokens = toks[0].slice(o.prompt, o.prompt + 8);
        if (o.kernels?.fuseNorm === false) rec.fuse_norm = false;
        if (loop === "device" && o.profile) Object.assign(rec, await profileSteps(o, prompts));
      } catch (e) {
        rec.error = String((e as Error).stack ?? e);
      }
      out.push(rec);
    }
  }
  return out;
}

/**
 * bench/model_bench.ts --generate: after its LoRA training run, the adapter is merged into the base
 * weights (so every linear is a plain one the decoding GEMV runs; the tokens are the adapted model's),
 * then greedy generation at batch 1 and 8, 32-token prompt, 128 new tokens (8 and 8 with --quick), with
 * the reference loop timed too at batch 1 (the figure before).
 */
export async function generateBench(
  model: Module,
  device: Device,
  args: { name: string; seed: number; quick: boolean },
): Promise<Record<string, unknown>[]> {
  model.eval();
  const merged = await mergeAndUnload(model);
  const common = {
    model: merged as unknown as GenerateBenchOptions["model"],
    device,
    name: args.name,
    prompt: args.quick ? 8 : 32,
    gen: args.quick ? 8 : 128,
    readEvery: 16,
    seed: args.seed,
  };
  const records = [
    ...await generateRecords({ ...common, batches: [1], reference: true }),
    ...await generateRecords({ ...common, batches: args.quick ? [] : [8], reference: false }),
  ];
  return records.map((r) => ({ ...r, adapter: "merged" }));
}

async function main(): Promise<void> {
  const argv = Deno.args;
  const get = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const quick = argv.includes("--quick");
  const ckpt = get("--ckpt") ?? null;
  if (!quick && ckpt === null) throw new Error("generate_bench: give --ckpt DIR (or --quick)");
  const dtype = (get("--dtype") ?? "f32") as DType;
  const device = get("--device") === "cpu" ? cpuDevice() : await webgpuDevice();
  const layers = get("--layers");
  let model;
  let name = get("--name") ??
    (ckpt === null ? "smollm2-shape-2l-quick" : ckpt.replace(/\/+$/, "").split("/").pop()!);
  if (ckpt !== null && layers === undefined) {
    model = await AutoModelForCausalLM.fromPretrained(ckpt, { device, dtype });
  } else {
    const config = ckpt === null
      ? QUICK_CONFIG
      : { ...JSON.parse(await Deno.readTextFile(`${ckpt}/config.json`)), num_hidden_layers: Number(layers) };
    if (layers !== undefined) name += `-${layers}l-random`;
    model = AutoModelForCausalLM.fromConfig(config, { device, dtype, seed: 0 });
  }
  const quant = get("--quant");
  if (quant !== undefined) {
    // The base's Linears quantized (the LM head and embeddings stay f32), as bench/qlora_bench.ts does.
    const { quantizeModel } = await import("../mod.ts");
    quantizeModel(model as unknown as Module, {
      scheme: quant as "nf4" | "int8",
      blockSize: 64,
      exclude: ["lm_head"],
    });
    name += `-${quant}`;
  }
  const lora = get("--lora");
  if (lora !== undefined) {
    const config = new LoraConfig({
      r: Number(lora),
      loraAlpha: 2 * Number(lora),
      targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    });
    // The adapters patch the model's Linears in place; generation runs on the patched base model.
    getPeftModel(model as unknown as Parameters<typeof getPeftModel>[0], config);
    // B starts at zero; random B makes the adapter change the tokens, as a trained one does.
    const { randn, scale } = await import("../mod.ts");
    (model as unknown as Module).namedParameters().forEach(([path, p], i) => {
      if (path.endsWith("lora_B.weight")) {
        p._assign(scale(randn(p.shape, { device, dtype: p.dtype, seed: i }), 0.02));
      }
    });
    (model as unknown as Module).eval();
    name += `-lora-r${lora}`;
  }
  const records = await generateRecords({
    model,
    device,
    name,
    batches: (get("--batch") ?? (quick ? "1" : "1,8")).split(",").map(Number),
    prompt: Number(get("--prompt") ?? (quick ? 8 : 32)),
    gen: Number(get("--gen") ?? (quick ? 8 : 128)),
    readEvery: Number(get("--read-every") ?? 16),
    seed: Number(get("--seed") ?? 1234),
    reference: argv.includes("--reference"),
    profile: argv.includes("--profile") || argv.includes("--profile-detail")
      ? { detail: argv.includes("--profile-detail") }
      : null,
    kernels: {
      ...(argv.includes("--gemv") ? { gemv: true } : {}),
      ...(argv.includes("--no-fuse-norm") ? { fuseNorm: false } : {}),
    },
  });
  for (const r of records) console.log(JSON.stringify({ ...r, dtype }));
}

if (import.meta.main) await main();
