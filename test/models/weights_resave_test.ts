/**
 * Re-saving a model into a directory that holds an earlier save in another layout (one file vs shards):
 * the directory must afterwards describe only the new save. transformers' loader (and ours) prefers
 * `model.safetensors` over an index, so a stale single file left beside new shards is what gets loaded.
 */
import assert from "node:assert/strict";
import { cpuDevice, llamaConfig, LlamaForCausalLM, saveModel } from "../../mod.ts";
import { withTempDir as withDir } from "./tiny_model.ts";

const CONFIG = llamaConfig({
  vocabSize: 24,
  hiddenSize: 16,
  intermediateSize: 24,
  numHiddenLayers: 2,
  numAttentionHeads: 2,
  numKeyValueHeads: 1,
});

function baseModel(seed: number): LlamaForCausalLM {
  return new LlamaForCausalLM(CONFIG, { device: cpuDevice(), seed });
}

/** Sorted file names in `dir`. */
function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

Deno.test("saveModel: re-saving sharded over a single-file save loads the new weights, not the stale file", async () => {
  await withDir(async (dir) => {
    await baseModel(1).savePretrained(dir);
    await saveModel(baseModel(2), dir, { maxShardBytes: 6000 });
    const loaded = await LlamaForCausalLM.fromPretrained(dir, { device: cpuDevice() });
    const expected = baseModel(2).stateDict();
    for (const [k, t] of Object.entries(loaded.stateDict())) {
      assert.deepEqual(t.dataSync(), expected[k].dataSync(), k);
    }
  });
});

Deno.test("saveModel: re-saving with fewer shards or as one file leaves no stale shard or index behind", async () => {
  await withDir(async (dir) => {
    await saveModel(baseModel(1), dir, { maxShardBytes: 4000 });
    const many = names(dir);
    await saveModel(baseModel(2), dir, { maxShardBytes: 12000 });
    const fewer = names(dir);
    assert.ok(fewer.length < many.length, `${many} → ${fewer}`);
    const index = JSON.parse(Deno.readTextFileSync(`${dir}/model.safetensors.index.json`));
    const listed = new Set(Object.values(index.weight_map as Record<string, string>));
    assert.deepEqual(fewer, [...listed, "config.json", "model.safetensors.index.json"].sort());
    await baseModel(3).savePretrained(dir);
    assert.deepEqual(names(dir), ["config.json", "model.safetensors"]);
  });
});
