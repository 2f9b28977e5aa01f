/** The golden PEFT adapter on WebGPU: fused forward and merged weights equal W + scale · B A (≤ 1e-4). */
import assert from "node:assert/strict";
import { type LinearLoRA, loadAdapter, mergeAndUnload, tensor } from "../../mod.ts";
import { readSafetensors } from "../../src/io/safetensors.ts";
import { fixture, loadFixture, relErr } from "../helpers.ts";
import { moduleAt, tinyLlamaTree } from "./adapter_fixtures.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";

const ADAPTER_DIR = new URL("../fixtures/llama-tiny-lora/adapter/", import.meta.url).pathname;
const RANK = 8, SCALE = 2;
const base = loadFixture("llama-tiny-lora/base/model.safetensors");
const adapter = readSafetensors(fixture("llama-tiny-lora/adapter/adapter_model.safetensors")).tensors;

/** W + SCALE · B A in float64 for the module `name`. */
function mergedReference(
  name: string,
): { ref: Float64Array; outF: number; inF: number; W: ArrayLike<number> } {
  const W = base.get(`${name}.weight`)!;
  const A = adapter.get(`base_model.model.${name}.lora_A.weight`)!.data as Float32Array;
  const B = adapter.get(`base_model.model.${name}.lora_B.weight`)!.data as Float32Array;
  const [outF, inF] = W.shape;
  const ref = new Float64Array(outF * inF);
  for (let o = 0; o < outF; o++) {
    for (let i = 0; i < inF; i++) {
      let acc = 0;
      for (let k = 0; k < RANK; k++) acc += B[o * RANK + k] * A[k * inF + i];
      ref[o * inF + i] = W.data[o * inF + i] + SCALE * acc;
    }
  }
  return { ref, outF, inF, W: W.data };
}

gpuTest(
  "golden adapter on WebGPU: the fused forward and mergeAndUnload both give W + 2·BA",
  async (device) => {
    const model = tinyLlamaTree();
    model.loadStateDict(Object.fromEntries(base));
    await model.to(device);
    const names = await loadAdapter(model, ADAPTER_DIR);
    assert.equal(names.length, 14);
    const refs = new Map(names.map((n) => [n, mergedReference(n)]));
    for (const name of names) {
      const layer = moduleAt(model, name) as LinearLoRA;
      assert.equal(layer.lora_A.weight.device, device, `${name}: the adapter lives on the GPU`);
      const { ref, outF, inF } = refs.get(name)!;
      // An identity batch through the fused forward returns the effective weight, transposed.
      const eye = new Float32Array(inF * inF);
      for (let i = 0; i < inF; i++) eye[i * inF + i] = 1;
      layer.eval();
      const y = await layer.forward(tensor(eye, [inF, inF], { device })).data();
      const w = new Float64Array(outF * inF);
      for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) w[o * inF + i] = y[i * outF + o];
      const e = relErr(w, ref);
      assert.ok(e <= 1e-4, `${name}: fused forward vs W + 2·BA: relative error ${e}`);
    }
    await mergeAndUnload(model);
    for (const name of names) {
      const { ref, W } = refs.get(name)!;
      const t = model.stateDict()[`${name}.weight`];
      assert.equal(t.device, device);
      const merged = await t.data();
      const e = relErr(merged, ref);
      assert.ok(e <= 1e-4, `${name}: merged weight: relative error ${e}`);
      assert.ok(relErr(merged, W) > 1e-2, `${name} did not change, so the check above proves nothing`);
    }
  },
);
