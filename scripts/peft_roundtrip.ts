/**
 * Saves adapters made with our PeftModel for PEFT to read back: three named adapters on the tiny Llama
 * base (different targets, ranks, alphas, rsLoRA, an "all-linear" one with a rank pattern) plus a weighted
 * "cat" adapter, written by `saveAdapter` in PEFT's multi-adapter layout, with our logits per adapter and
 * for mixed rows beside them. `scripts/check_peft_roundtrip.py <dir>` then loads the folder with PEFT and
 * compares its logits with ours.
 *
 *   deno run -A scripts/peft_roundtrip.ts /tmp/peft-roundtrip
 *   /tmp/hf/bin/python scripts/check_peft_roundtrip.py /tmp/peft-roundtrip
 */
import {
  cpuDevice,
  getPeftModel,
  LlamaForCausalLM,
  LoraConfig,
  manualSeed,
  writeSafetensors,
} from "../mod.ts";

const out = Deno.args[0] ?? "/tmp/peft-roundtrip";
const BASE = "test/fixtures/llama-tiny-lora/base";

manualSeed(7);
const model = await LlamaForCausalLM.fromPretrained(BASE, { device: cpuDevice() });
const pm = getPeftModel(
  model,
  new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ["q_proj", "v_proj"], initLoraWeights: false }),
);
pm.addAdapter(
  "second",
  new LoraConfig({
    r: 3,
    loraAlpha: 5,
    useRslora: true,
    targetModules: "model\\.layers\\.1\\..*_proj",
    alphaPattern: { o_proj: 2 },
    initLoraWeights: false,
  }),
);
pm.addAdapter(
  "wide",
  new LoraConfig({
    r: 2,
    loraAlpha: 4,
    targetModules: "all-linear",
    rankPattern: { down_proj: 5 },
    initLoraWeights: false,
  }),
);
pm.addWeightedAdapter(["default", "wide"], [0.5, 1.5], "mix", { combinationType: "cat" });
pm.eval();

const ids = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38], [46, 26, 43, 38, 32], [79, 50, 28, 84, 19]];
const mixed = ["second", "__base__", "default", "mix"];
const logits: Record<string, { dtype: string; shape: number[]; data: Float32Array }> = {};
const record = async (key: string, adapterNames?: string[]) => {
  const { logits: l } = pm.forward(ids, adapterNames ? { adapterNames } : {}) as {
    logits: { shape: readonly number[]; data(): Promise<Float32Array> };
  };
  logits[key] = { dtype: "F32", shape: [...l.shape], data: await l.data() };
};
for (const name of pm.adapterNames) {
  pm.setAdapter(name);
  await record(`logits_${name}`);
}
await record("logits_mixed", mixed);
await pm.saveAdapter(out, { baseModelNameOrPath: BASE });
await Deno.writeFile(
  `${out}/ours.safetensors`,
  writeSafetensors({
    ...logits,
    input_ids: { dtype: "I32", shape: [ids.length, ids[0].length], data: Int32Array.from(ids.flat()) },
  }, { adapters: JSON.stringify(pm.adapterNames), mixed: JSON.stringify(mixed) }),
);
console.log(`saved ${pm.adapterNames.join(", ")} to ${out}`);
