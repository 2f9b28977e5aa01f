/**
 * The demo's `--base` takes the model families AutoModelForCausalLM loads: a Qwen2 and a Qwen3
 * checkpoint with a byte-level BPE tokenizer.json (test/fixtures/tokenizer-bytelevel) fine-tune, and
 * the adapter each run writes loads back onto its base.
 */
import assert from "node:assert/strict";
import { AutoModelForCausalLM, cpuDevice, llamaConfig, loadAdapter } from "../../../mod.ts";

const demoPath = new URL("../../../examples/demo.ts", import.meta.url).pathname;
const tokenizerDir = new URL("../../fixtures/tokenizer-bytelevel/", import.meta.url).pathname;

for (const architecture of ["Qwen2ForCausalLM", "Qwen3ForCausalLM"]) {
  Deno.test(`demo --base with a ${architecture} checkpoint and its tokenizer.json`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      const base = `${dir}/model`;
      const config = llamaConfig({
        architectures: [architecture],
        vocabSize: 400,
        hiddenSize: 16,
        intermediateSize: 32,
        numHiddenLayers: 1,
        numAttentionHeads: 2,
        numKeyValueHeads: 1,
        headDim: 8,
      });
      await AutoModelForCausalLM.fromConfig(config, { device: cpuDevice(), seed: 5 }).savePretrained(base);
      for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
        await Deno.copyFile(tokenizerDir + f, `${base}/${f}`);
      }
      const pairs = ["one", "two", "three", "four", "five"].map((w, i) =>
        JSON.stringify({ prompt: `Say ${w}:`, completion: ` ${w} ${i}` })
      );
      await Deno.writeTextFile(`${dir}/pairs.jsonl`, pairs.join("\n") + "\n");
      const args = ["run", "-A", demoPath, "--base", base, "--data", `${dir}/pairs.jsonl`, "--device", "cpu"];
      args.push(
        "--steps",
        "2",
        "--batch",
        "2",
        "--rank",
        "2",
        "--targets",
        "q_proj,k_proj",
        "--out",
        `${dir}/out`,
      );
      const run = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
        .output();
      const dec = new TextDecoder();
      assert.equal(run.code, 0, `demo failed:\n${dec.decode(run.stdout)}\n${dec.decode(run.stderr)}`);
      assert.match(dec.decode(run.stdout), /tokenizer\.json \(400 tokens/);
      const model = await AutoModelForCausalLM.fromPretrained(base, { device: cpuDevice() });
      assert.equal(model.constructor.name, architecture);
      await loadAdapter(model, `${dir}/out`);
      const adapted = model.namedModules().filter(([n]) => n.endsWith(".lora_A")).map(([n]) => n);
      assert.deepEqual(adapted, [
        "model.layers.0.self_attn.q_proj.lora_A",
        "model.layers.0.self_attn.k_proj.lora_A",
      ]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
