/**
 * Where one generated token spends its time: greedy generation through the device loop under
 * `profile({ detail: true })` (rows per kernel and shape), after a warm-up generation that compiles the
 * pipelines. Reports GPU (or host) ms and dispatches per generated token.
 *
 * Usage: deno run -A bench/decode_profile.ts --ckpt DIR [--batch 1] [--prompt 32] [--gen 64] [--dtype f32]
 *        deno run -A bench/decode_profile.ts --quick   (2-layer SmolLM2-shaped random model)
 * @module
 */
import { AutoModelForCausalLM, type DType, profile, webgpuDevice } from "../mod.ts";
import { generateTokens } from "../src/models/generate.ts";
import { QUICK_CONFIG } from "./quick_model.ts";

const argv = Deno.args;
const get = (name: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const ckpt = get("--ckpt");
if (ckpt === undefined && !argv.includes("--quick")) {
  throw new Error("decode_profile: give --ckpt DIR or --quick");
}
const device = await webgpuDevice();
const dtype = (get("--dtype") ?? "f32") as DType;
const model = ckpt === undefined
  ? AutoModelForCausalLM.fromConfig(QUICK_CONFIG, { device, dtype, seed: 0 })
  : await AutoModelForCausalLM.fromPretrained(ckpt, { device, dtype });
model.eval();
const batch = Number(get("--batch") ?? 1);
const promptLen = Number(get("--prompt") ?? 32);
const gen = Number(get("--gen") ?? 64);
const vocab = model.config.vocabSize;
const prompt = Array.from(
  { length: batch },
  (_, b) => Array.from({ length: promptLen }, (_, i) => (b * 7919 + i * 104729) % vocab),
);
const opts = { maxNewTokens: gen, greedy: true };
await generateTokens(model, prompt, { ...opts, maxNewTokens: 8 });
await device.sync();
const t0 = performance.now();
await generateTokens(model, prompt, opts);
await device.sync();
const plainMs = performance.now() - t0;
const p = await profile(() => generateTokens(model, prompt, opts), { device, detail: true });
const calls = p.rows.reduce((s, r) => s + r.calls, 0);
console.log(
  `decode profile: batch ${batch}, prompt ${promptLen}, ${gen} new tokens; unprofiled ${
    (plainMs / gen).toFixed(3)
  } ms/token ` +
    `(${(batch * gen * 1000 / plainMs).toFixed(1)} tok/s); profiled wall ${
      (p.totalMs / gen).toFixed(3)
    } ms/token, ` +
    `${p.timing} ${(p.measuredMs / gen).toFixed(3)} ms/token, ${(calls / gen).toFixed(1)} dispatches/token`,
);
console.log(
  p.rows.slice(0, 40).map((r) =>
    `${r.name.padEnd(70)} ${String(r.calls).padStart(6)} ${r.ms.toFixed(3).padStart(9)} ms`
  ).join("\n"),
);
