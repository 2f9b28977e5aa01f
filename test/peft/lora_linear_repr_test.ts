/** LoRA layers print their base Linear's settings, the adapter's rank, alpha, scale, dropout, and lora_A / lora_B. */
import assert from "node:assert/strict";
import {
  applyLoraToLinearModules,
  AutoModelForCausalLM,
  cpuDevice,
  Linear,
  Module,
  PeftConfig,
} from "../../mod.ts";
import { unpatchLinearModule } from "../../src/peft/lora_linear.ts";

Deno.test("a patched Linear prints as LinearLoRA with its adapter settings and lora_A / lora_B children", async () => {
  const root = new Module();
  root.q_proj = new Linear(64, 32);
  root.k_proj = new Linear(64, 32);
  applyLoraToLinearModules(
    root,
    new PeftConfig({ targetModules: ["q_proj"], dim: 4, alpha: 16, dropout: 0.1 }),
  );
  const want = [
    "Module(",
    "  (q_proj): LinearLoRA(",
    "    in_features=64, out_features=32, bias=True, rank=4, alpha=16, scale=4.0, dropout=0.1",
    "    (lora_A): Linear(in_features=64, out_features=4, bias=False)",
    "    (lora_B): Linear(in_features=4, out_features=32, bias=False)",
    "  )",
    "  (k_proj): Linear(in_features=64, out_features=32, bias=True)",
    ")",
  ];
  assert.equal(String(root), want.join("\n"));
  await root.q_proj.merge();
  assert.ok(String(root.q_proj).includes("dropout=0.1, merged=True"), String(root.q_proj));
  await root.q_proj.unmerge();
  unpatchLinearModule(root.q_proj);
  assert.equal(String(root.q_proj), "Linear(in_features=64, out_features=32, bias=True)");
});

Deno.test("a LoRA-patched Llama prints its tree with only the targeted projections as LinearLoRA", async () => {
  const model = await AutoModelForCausalLM.fromPretrained("examples/demo/base-model", {
    device: cpuDevice(),
  });
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj", "*.v_proj"], dim: 8 }));
  const text = String(model);
  assert.ok(
    text.startsWith("LlamaForCausalLM(\n  (model): LlamaModel(\n    (embed_tokens): Embedding(256, 64)"),
  );
  assert.ok(text.includes("(layers): ModuleList(\n      (0-1): 2 x LlamaDecoderLayer("), text);
  assert.equal(text.match(/: LinearLoRA\(/g)?.length, 2); // one q_proj and one v_proj per folded layer
  assert.ok(text.includes("(k_proj): Linear(in_features=64, out_features=64, bias=False)"));
  assert.ok(text.includes("(input_layernorm): LlamaRMSNorm((64,), eps=1e-06)"));
  assert.ok(text.endsWith("  (lm_head): Linear(in_features=64, out_features=256, bias=False)\n)"));
});
