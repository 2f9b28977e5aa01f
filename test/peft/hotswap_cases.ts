/**
 * PeftModel.hotswapAdapter's cases, run on any device so the CPU and WebGPU suites share them: the new
 * weights land in the same tensor objects and the same storages, with the device's live bytes, buffers,
 * peak and pool unchanged (nothing allocated), and give the outputs a fresh load of them gives, in a mixed
 * batch too; other ranks or targets are ConfigErrors that change nothing.
 */
import assert from "node:assert/strict";
import {
  ConfigError,
  type Device,
  getPeftModel,
  LlamaForCausalLM,
  LoraConfig,
  manualSeed,
  PeftModel,
  type Tensor,
} from "../../mod.ts";
import type { AdapterFilesInput } from "../../src/peft/adapter.ts";
import { relErr } from "../helpers.ts";
import { ADAPTERS_DIR, BASE_DIR, inputIds } from "./peft_cases.ts";

const base = (device: Device) => LlamaForCausalLM.fromPretrained(BASE_DIR, { device });
const logits = async (pm: PeftModel<LlamaForCausalLM>, adapterNames?: string[]) =>
  await pm.forward(inputIds(), adapterNames ? { adapterNames } : {}).logits.data();

/** Every adapter tensor of `name`, in model order. */
function adapterTensors(pm: PeftModel, name: string): Tensor[] {
  return pm.adapterLayers(name).flatMap(([, a]) => [a.lora_A.weight, a.lora_B.weight]);
}

/** A PEFT adapter folder made here with `config` (non-zero B, so the swap shows in the outputs). */
async function savedAdapter(device: Device, config: LoraConfig, seed: number): Promise<string> {
  manualSeed(seed);
  const pm = getPeftModel(await base(device), config);
  const dir = await Deno.makeTempDir();
  await pm.saveAdapter(dir);
  return dir;
}

/** An adapter folder's two files, read into memory. */
async function adapterFiles(dir: string): Promise<AdapterFilesInput> {
  return {
    "adapter_model.safetensors": await Deno.readFile(`${dir}/adapter_model.safetensors`),
    "adapter_config.json": await Deno.readTextFile(`${dir}/adapter_config.json`),
  };
}

/** The fixture's "default" adapter has r = 4 on q_proj and v_proj; this one fits it with other alphas. */
const sameShapes = () =>
  new LoraConfig({
    r: 4,
    loraAlpha: 6,
    alphaPattern: { v_proj: 3 },
    targetModules: ["q_proj", "v_proj"],
    initLoraWeights: false,
  });

/** Runs every hot-swap case on `device`; outputs must agree within `tol`. */
export async function runHotswapCases(device: Device, tol: number, t: Deno.TestContext): Promise<void> {
  const dirs: string[] = [];
  try {
    const swapIn = await savedAdapter(device, sameShapes(), 11);
    dirs.push(swapIn);

    await t.step(
      "the new weights go into the same tensors, live bytes unchanged, outputs as a fresh load",
      async () => {
        const pm = await PeftModel.fromPretrained(await base(device), ADAPTERS_DIR);
        await pm.loadAdapter(`${ADAPTERS_DIR}/b`, "b");
        const before = adapterTensors(pm, "default");
        const oldValues = await Promise.all(before.map((x) => x.data()));
        // Forwards first: the swap must also work on buffers a forward has used, and a mixed batch before it
        // leaves packed adapters behind (WebGPU) that must not serve stale weights after it.
        await logits(pm);
        await logits(pm, ["default", "b", "default"]);
        // The files are read first and passed in memory: with no I/O inside the measured call, no
        // finalizer of an earlier test's dropped tensors can run in it and move the live bytes.
        const files = await adapterFiles(swapIn);
        const storages = before.map((x) => x.storage());
        const mem = device.memory();
        device.resetPeakMemory();
        await pm.hotswapAdapter(files, "default");
        const now = device.memory();
        assert.equal(now.bytes, mem.bytes);
        assert.equal(now.buffers, mem.buffers);
        // No storage was allocated even for a moment (the peak would show it), none taken from or given
        // to the pool: the values went into the buffers the tensors had.
        assert.equal(now.peakBytes, mem.bytes, "no transient allocation");
        assert.equal(now.pooledBytes, mem.pooledBytes);
        const after = adapterTensors(pm, "default");
        assert.equal(after.length, before.length);
        after.forEach((x, i) => assert.equal(x, before[i], `tensor ${i} is the same object`));
        after.forEach((x, i) => assert.equal(x.storage(), storages[i], `tensor ${i} keeps its storage`));
        const newValues = await Promise.all(after.map((x) => x.data()));
        assert.ok(newValues.some((v, i) => v.some((e, j) => e !== oldValues[i][j])), "the weights changed");
        assert.equal(pm.peftConfig.default.loraAlpha, 6);

        const fresh = await PeftModel.fromPretrained(await base(device), swapIn);
        const want = await logits(fresh);
        assert.ok(relErr(await logits(pm), want) <= tol, "active adapter");
        // a mixed batch reads the swapped weights and the new scales too
        const mixed = await logits(pm, ["default", "b", "default"]);
        const rowLen = want.length / 3;
        assert.ok(relErr(mixed.subarray(0, rowLen), want.subarray(0, rowLen)) <= tol, "mixed row 0");
        // swapping an adapter that is not active
        pm.setAdapter("b", { inferenceMode: true });
        const original = await adapterFiles(ADAPTERS_DIR);
        const bytesBack = device.memory().bytes;
        await pm.hotswapAdapter(original, "default");
        assert.equal(device.memory().bytes, bytesBack);
        pm.setAdapter("default", { inferenceMode: true });
        const back = await Promise.all(adapterTensors(pm, "default").map((x) => x.data()));
        back.forEach((v, i) => assert.deepEqual(v, oldValues[i], `tensor ${i} holds the original again`));
      },
    );

    await t.step(
      "another rank or other targets is a ConfigError naming the module and shapes; nothing changes",
      async () => {
        const pm = await PeftModel.fromPretrained(await base(device), ADAPTERS_DIR);
        const tensors = adapterTensors(pm, "default");
        const values = await Promise.all(tensors.map((x) => x.data()));
        const want = await logits(pm);
        const otherRank = await savedAdapter(device, sameShapes().with({ r: 3 }), 12);
        dirs.push(otherRank);
        // the last module's shapes differ only after every other module's fit: still nothing is written
        const lastOnly = await savedAdapter(
          device,
          sameShapes().with({ rankPattern: { "model.layers.1.self_attn.v_proj": 2 } }),
          13,
        );
        dirs.push(lastOnly);
        await assert.rejects(
          pm.hotswapAdapter(otherRank, "default"),
          (e: unknown) =>
            e instanceof ConfigError &&
            /model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight .*\[4,64\].*\[3,64\]/.test(
              (e as Error).message,
            ),
        );
        await assert.rejects(
          pm.hotswapAdapter(lastOnly, "default"),
          (e: unknown) =>
            e instanceof ConfigError &&
            /model\.layers\.1\.self_attn\.v_proj\.lora_A/.test((e as Error).message),
        );
        await assert.rejects(
          pm.hotswapAdapter(`${ADAPTERS_DIR}/b`, "default"),
          (e: unknown) =>
            e instanceof ConfigError && /not targeted any more: .*q_proj/.test((e as Error).message) &&
            /newly targeted: .*o_proj/.test((e as Error).message),
        );
        await assert.rejects(pm.hotswapAdapter(ADAPTERS_DIR, "nope"), ConfigError);
        const now = adapterTensors(pm, "default");
        now.forEach((x, i) => assert.equal(x, tensors[i]));
        const after = await Promise.all(now.map((x) => x.data()));
        after.forEach((v, i) => assert.deepEqual(v, values[i]));
        assert.deepEqual(await logits(pm), want);
      },
    );
  } finally {
    for (const d of dirs) await Deno.remove(d, { recursive: true });
  }
}
