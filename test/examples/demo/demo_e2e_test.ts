/**
 * The demo end to end, as users run it: the real program in a subprocess, on the CPU reference and on a
 * WebGPU software adapter, on the shipped model and on a checkpoint with its own tokenizer.json; the
 * adapter each run writes must load back with loadAdapter.
 */
import assert from "node:assert/strict";
import { cpuDevice, llamaConfig, LlamaForCausalLM, loadAdapter } from "../../../mod.ts";
import { SHIPPED_MODEL_DIR } from "../../../examples/demo/run.ts";

const demoPath = new URL("../../../examples/demo.ts", import.meta.url).pathname;
const fixtureDir = new URL("../../fixtures/tokenizer/", import.meta.url).pathname;

/** Runs the demo program; the output is returned, and printed when the run fails. */
async function runDemo(args: string[]): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", demoPath, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const stdout = dec.decode(out.stdout), stderr = dec.decode(out.stderr);
  assert.equal(out.code, 0, `demo ${args.join(" ")} failed:\n${stdout}\n${stderr}`);
  return stdout;
}

/** The percentage printed on a line that starts with `label`. */
function percentAfter(stdout: string, label: string): number {
  const m = new RegExp(`^${label}: (\\d+\\.\\d)%`, "m").exec(stdout);
  assert.ok(m, `no "${label}: NN.N%" line in:\n${stdout}`);
  return Number(m[1]);
}

/** Loads the adapter in `dir` onto a fresh copy of `baseDir`; returns the adapted module names. */
async function loadBack(baseDir: string, dir: string): Promise<string[]> {
  const model = await LlamaForCausalLM.fromPretrained(baseDir, { device: cpuDevice() });
  return await loadAdapter(model, dir);
}

/** The relative errors the demo printed for reload and merge. */
function agreement(stdout: string): { reload: number; merge: number } {
  const m = /relative error (\S+); merged \(mergeAndUnload\) vs unmerged (\S+)$/m.exec(stdout);
  assert.ok(m, stdout);
  return { reload: Number(m[1]), merge: Number(m[2]) };
}

Deno.test("demo on the CPU: task B from ≤ 20% to ≥ 90%, adapter loads back, --resume continues", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/out`;
    const stdout = await runDemo(["--device", "cpu", "--steps", "60", "--eval", "60", "--out", out]);
    assert.match(stdout, /^device: cpu/m);
    assert.ok(percentAfter(stdout, "accuracy before fine-tuning") <= 20, stdout);
    assert.ok(percentAfter(stdout, "accuracy after fine-tuning") >= 90, stdout);
    const { reload, merge } = agreement(stdout);
    assert.ok(reload <= 1e-6 && merge <= 1e-5, stdout);
    const names = await loadBack(SHIPPED_MODEL_DIR, out);
    assert.equal(names.length, 14, "7 projections in each of 2 layers");
    assert.ok(names.every((n) => n.endsWith("_proj")));
    const config = JSON.parse(await Deno.readTextFile(`${out}/adapter_config.json`));
    assert.equal(config.r, 8);
    assert.equal(config.lora_alpha, 16);
    assert.equal(config.base_model_name_or_path.endsWith("base-model"), true);

    const resumed = `${dir}/resumed`;
    await runDemo(["--device", "cpu", "--resume", out, "--steps", "2", "--eval", "4", "--out", resumed]);
    const state = JSON.parse(await Deno.readTextFile(`${resumed}/trainer_state.json`));
    assert.equal(state.step, 62);
    assert.equal(state.losses.length, 62);
    assert.equal((await loadBack(SHIPPED_MODEL_DIR, resumed)).length, 14);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo with --base (own tokenizer.json) and --data (JSONL, then plain text) on the CPU", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const base = `${dir}/model`;
    const config = llamaConfig({
      vocabSize: 27,
      hiddenSize: 16,
      intermediateSize: 32,
      numHiddenLayers: 1,
      numAttentionHeads: 2,
    });
    await new LlamaForCausalLM(config, { device: cpuDevice(), seed: 3 }).savePretrained(base);
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(fixtureDir + f, `${base}/${f}`);
    }
    const colors = ["red", "blue", "green"], animals = ["cat", "dog", "bird"];
    const lines = animals.flatMap((a, i) =>
      colors.map((c) =>
        JSON.stringify({
          prompt: `what color is the ${a} ?`,
          completion: `${colors[(i + colors.indexOf(c)) % 3]} .`,
        })
      )
    );
    await Deno.writeTextFile(`${dir}/pairs.jsonl`, lines.join("\n") + "\n");
    const out = `${dir}/out`;
    const stdout = await runDemo([
      "--base",
      base,
      "--data",
      `${dir}/pairs.jsonl`,
      "--device",
      "cpu",
      "--steps",
      "3",
      "--batch",
      "4",
      "--rank",
      "2",
      "--alpha",
      "4",
      "--targets",
      "q_proj,v_proj",
      "--out",
      out,
    ]);
    assert.match(stdout, /tokenizer\.json \(27 tokens, @huggingface\/tokenizers\)/);
    assert.match(stdout, /8 prompt\/completion pairs to train on, 1 held out/);
    percentAfter(stdout, "accuracy after fine-tuning");
    assert.deepEqual(await loadBack(base, out), [
      "model.layers.0.self_attn.q_proj",
      "model.layers.0.self_attn.v_proj",
    ]);

    await Deno.writeTextFile(
      `${dir}/text.txt`,
      "the big cat sat on the mat . the small dog ran on the log . ".repeat(8),
    );
    const textOut = await runDemo([
      "--base",
      base,
      "--data",
      `${dir}/text.txt`,
      "--device",
      "cpu",
      "--steps",
      "2",
      "--batch",
      "2",
      "--seq-len",
      "8",
      "--out",
      `${dir}/text-out`,
    ]);
    assert.match(textOut, /plain text, \d+ tokens/);
    assert.match(textOut, /^held-out loss after fine-tuning: \d+\.\d{4}$/m);
    assert.doesNotMatch(textOut, /accuracy after/);
    assert.equal((await loadBack(base, `${dir}/text-out`)).length, 7);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Why WebGPU cannot run here, or null when an adapter (hardware or software) is available. */
async function missingWebGpu(): Promise<string | null> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) return "this runtime has no navigator.gpu";
  try {
    return (await gpu.requestAdapter()) === null ? "requestAdapter() returned null (no adapter)" : null;
  } catch (e) {
    return `requestAdapter() failed: ${(e as Error).message}`;
  }
}

Deno.test("demo on WebGPU (a software adapter when there is no GPU): trains and writes a loadable adapter", async () => {
  const missing = await missingWebGpu();
  if (missing !== null) {
    if (Deno.env.get("CI") === "true") assert.fail(`WebGPU is required under CI=true: ${missing}`);
    console.log(`skipping the WebGPU demo run: ${missing}`);
    return;
  }
  const dir = await Deno.makeTempDir();
  try {
    const stdout = await runDemo([
      "--device",
      "webgpu",
      "--steps",
      "3",
      "--batch",
      "4",
      "--eval",
      "8",
      "--out",
      `${dir}/out`,
    ]);
    assert.match(stdout, /^device: webgpu/m);
    percentAfter(stdout, "accuracy after fine-tuning");
    const { reload, merge } = agreement(stdout);
    assert.ok(reload <= 1e-4 && merge <= 1e-4, stdout);
    assert.equal((await loadBack(SHIPPED_MODEL_DIR, `${dir}/out`)).length, 14);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
