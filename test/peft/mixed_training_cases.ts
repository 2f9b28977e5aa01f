/**
 * Training several adapters in one mixed batch (PeftModel.forward with `adapterNames`, gradients on), run on
 * any device so the CPU and WebGPU suites share the cases: the gradients of two adapters trained together in
 * one batch, each row on its own adapter and some rows on none ("__base__"), equal those of training each
 * adapter alone on its own rows. The loss is the model's mean over every token of the batch, so adapter g's
 * mixed-batch gradient is its own-rows gradient times rows_g / rows (all rows have one length).
 */
import assert from "node:assert/strict";
import {
  type Device,
  getPeftModel,
  LlamaForCausalLM,
  LoraConfig,
  manualSeed,
  type PeftModel,
  type Tensor,
} from "../../mod.ts";
import { relErr } from "../helpers.ts";
import { BASE_DIR } from "./peft_cases.ts";

/** The tiny Llama with adapters "a" (r 4 on q, v, down) and "b" (r 3 on q, o, up), both trainable, in eval mode. */
async function twoAdapters(device: Device, dtype: "f32" | "f16"): Promise<PeftModel<LlamaForCausalLM>> {
  manualSeed(7);
  const model = await LlamaForCausalLM.fromPretrained(BASE_DIR, { device, dtype });
  // Non-zero B (PEFT's init_lora_weights=False), so that A's gradients are not zero.
  const pm = getPeftModel(
    model,
    new LoraConfig({
      r: 4,
      loraAlpha: 8,
      targetModules: ["q_proj", "v_proj", "down_proj"],
      initLoraWeights: false,
    }),
    { adapterName: "a" },
  );
  pm.addAdapter(
    "b",
    new LoraConfig({
      r: 3,
      loraAlpha: 2,
      targetModules: ["q_proj", "o_proj", "up_proj"],
      initLoraWeights: false,
    }),
  );
  for (const name of ["a", "b"]) trainable(pm, name);
  return pm.eval();
}

/** Every weight of adapter `name` made trainable (setAdapter trains only the active adapter). */
function trainable(pm: PeftModel, name: string): Tensor[] {
  const ws = pm.adapterLayers(name).flatMap(([, a]) => [a.lora_A.weight, a.lora_B.weight]);
  for (const w of ws) w.requiresGrad = true;
  return ws;
}

/** The gradients of adapter `name`'s weights (in model order), then cleared. */
async function takeGrads(pm: PeftModel, name: string): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const [, a] of pm.adapterLayers(name)) {
    for (const w of [a.lora_A.weight, a.lora_B.weight]) {
      assert.ok(w.grad !== null, `${name}: a weight [${w.shape}] got no gradient`);
      out.push(Float32Array.from(await w.grad!.data()));
      w.grad!.dispose();
      w.grad = null;
    }
  }
  return out;
}

/** Token ids of `rows` rows of length 6 (distinct per row). */
const ids = (rows: number) =>
  Array.from({ length: rows }, (_, r) => Array.from({ length: 6 }, (_, j) => (r * 37 + j * 11 + 3) % 256));

/** The model's loss for `batch` (labels = the ids) with optional per-row adapters, backpropagated. */
function lossBackward(pm: PeftModel, batch: number[][], adapterNames?: string[]): void {
  const out = pm.forward(batch, { labels: batch, ...(adapterNames ? { adapterNames } : {}) }) as {
    loss: Tensor;
  };
  out.loss.backward();
  out.loss.dispose();
}

/** Runs the cases on `device`; gradients must agree within `tol` (relative, per tensor). */
export async function runMixedTrainingCases(
  device: Device,
  dtype: "f32" | "f16",
  tol: number,
  t: Deno.TestContext,
): Promise<void> {
  await t.step(
    "two adapters in one mixed batch get the gradients of training each on its own rows",
    async () => {
      const pm = await twoAdapters(device, dtype);
      const rows = ["a", "b", "__base__", "a", "b", "a"];
      const batch = ids(rows.length);
      if (device.kind === "webgpu") device.backend.beginProfile();
      lossBackward(pm, batch, rows);
      if (device.kind === "webgpu") {
        // The fused op ran, once forward and twice backward per adapted layer (7 per decoder layer's q, v,
        // down, o, up: 5 layers with some row's adapter, times 2 decoder layers), with no per-adapter GEMMs.
        const prof = await device.backend.endProfile();
        const calls = (name: string) => prof.find((r) => r.name === name)?.calls ?? 0;
        for (const k of ["lora_rows", "lora_rows_back", "lora_rows_grad"]) assert.equal(calls(k), 10, k);
      }
      const mixed = { a: await takeGrads(pm, "a"), b: await takeGrads(pm, "b") };
      for (const name of ["a", "b"] as const) {
        const own = batch.filter((_, i) => rows[i] === name);
        // Alone: the adapter active (the single-adapter fused path), the other one frozen.
        pm.setAdapter(name);
        lossBackward(pm, own);
        const alone = await takeGrads(pm, name);
        const share = own.length / rows.length;
        alone.forEach((g, i) => {
          const want = g.map((v) => v * share);
          const err = relErr(mixed[name][i], want);
          assert.ok(err <= tol, `${name} weight ${i}: relative error ${err} > ${tol}`);
        });
      }
      pm.unload();
    },
  );

  await t.step(
    "a batch of base rows only gives the adapters no gradient; the base stays frozen",
    async () => {
      const pm = await twoAdapters(device, dtype);
      const batch = ids(2);
      const out = pm.forward(batch, { labels: batch, adapterNames: ["__base__", "__base__"] }) as {
        loss: Tensor;
      };
      // nothing trainable was used: the loss has no graph
      assert.equal(out.loss.requiresGrad, false);
      out.loss.dispose();
      for (const name of ["a", "b"]) {
        for (const [, a] of pm.adapterLayers(name)) {
          assert.equal(a.lora_A.weight.grad, null);
          assert.equal(a.lora_B.weight.grad, null);
        }
      }
      pm.unload();
    },
  );

  await t.step("a row on one adapter gives the other no gradient at all", async () => {
    const pm = await twoAdapters(device, dtype);
    lossBackward(pm, ids(2), ["b", "__base__"]);
    for (const [, a] of pm.adapterLayers("a")) assert.equal(a.lora_A.weight.grad, null);
    const gb = await takeGrads(pm, "b");
    assert.ok(gb.every((g) => g.every(Number.isFinite)) && gb.some((g) => g.some((v) => v !== 0)));
    pm.unload();
  });
}
