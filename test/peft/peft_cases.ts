/**
 * The PEFT-made reference cases of test/fixtures/llama-peft-multi (scripts/make_peft_multi_cases.py):
 * three named adapters on the tiny Llama base, each set, disabled, mixed rows and add_weighted_adapter
 * cat / linear, run on any device so the CPU and WebGPU suites share them.
 */
import assert from "node:assert/strict";
import { type Device, LlamaForCausalLM, PeftModel } from "../../mod.ts";
import { readSafetensors } from "../../src/io/safetensors.ts";
import { fixture, loadFixture, relErr } from "../helpers.ts";

/** Where the cases live, relative to the repository root (the tests run from there). */
export const CASES_DIR = "test/fixtures/llama-peft-multi";
/** PEFT's multi-adapter folder: "default" at the top, the others in subfolders. */
export const ADAPTERS_DIR = `${CASES_DIR}/adapters`;
/** The base model of every case. */
export const BASE_DIR = "test/fixtures/llama-tiny-lora/base";

/** The cases' settings, as the generator recorded them. */
export const meta = JSON.parse(new TextDecoder().decode(fixture("llama-peft-multi/meta.json")));
/** Input ids and the logits of each case. */
export const golden = loadFixture("llama-peft-multi/golden.safetensors");

/** The input ids [3, 7] as rows. */
export function inputIds(): number[][] {
  const { shape, data } = golden.get("input_ids")!;
  return Array.from(
    { length: shape[0] },
    (_, i) => Array.from(data.subarray(i * shape[1], (i + 1) * shape[1])),
  );
}

/** The tiny base on `device` with PEFT's adapters default, b and c loaded, in eval mode. */
export async function loadedModel(device: Device): Promise<PeftModel<LlamaForCausalLM>> {
  const model = await LlamaForCausalLM.fromPretrained(BASE_DIR, { device });
  const pm = await PeftModel.fromPretrained(model, ADAPTERS_DIR);
  await pm.loadAdapter(`${ADAPTERS_DIR}/b`, "b");
  await pm.loadAdapter(`${ADAPTERS_DIR}/c`, "c");
  return pm;
}

/** Logits of `pm` for the cases' input (with `adapterNames` when given), as a flat array. */
export async function logitsOf(
  pm: PeftModel<LlamaForCausalLM>,
  adapterNames?: string[],
): Promise<Float32Array> {
  const out = pm.forward(inputIds(), adapterNames ? { adapterNames } : {}) as {
    logits: { data(): Promise<Float32Array> };
  };
  return await out.logits.data();
}

/** Asserts relative error ≤ tol against golden tensor `key`. */
export function assertClose(ours: ArrayLike<number>, key: string, tol: number): void {
  const ref = golden.get(key)!.data;
  const err = relErr(ours, ref);
  assert(err <= tol, `${key}: relative error ${err} > ${tol}`);
}

/** The tensors of one of PEFT's saved adapters (`sub` = "" for default) by file key. */
export function peftAdapterTensors(sub: string): Map<string, { shape: number[]; data: Float32Array }> {
  const path = `${ADAPTERS_DIR}${sub === "" ? "" : `/${sub}`}/adapter_model.safetensors`;
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [k, v] of readSafetensors(Deno.readFileSync(path)).tensors) {
    out.set(k, { shape: v.shape, data: v.data as Float32Array });
  }
  return out;
}

/** The config PEFT saved for adapter folder `sub`. */
export function peftAdapterConfig(sub: string): Record<string, unknown> {
  return JSON.parse(
    Deno.readTextFileSync(`${ADAPTERS_DIR}${sub === "" ? "" : `/${sub}`}/adapter_config.json`),
  );
}

/**
 * Every case on `device` within relative error `tol`: each adapter set, disabled, mixed rows, and the
 * weighted cat / linear adapters (their weights against PEFT's files too).
 */
export async function runAllCases(device: Device, tol: number, t: Deno.TestContext): Promise<void> {
  const pm = await loadedModel(device);
  try {
    assert.deepEqual(pm.adapterNames, ["default", "b", "c"]);
    for (const name of ["default", "b", "c"]) {
      await t.step(`adapter ${name} set`, async () => {
        pm.setAdapter(name);
        assert.deepEqual(pm.activeAdapter, name);
        assertClose(await logitsOf(pm), `logits_${name}`, tol);
      });
    }
    await t.step("adapters disabled", async () => {
      pm.setAdapter("default");
      const ours = await pm.withAdapterDisabled(() => logitsOf(pm));
      assertClose(ours, "logits_disabled", tol);
      assertClose(await logitsOf(pm), "logits_default", tol); // back on afterwards
    });
    await t.step(`mixed rows ${JSON.stringify(meta.mixed_adapter_names)}`, async () => {
      assertClose(await logitsOf(pm, meta.mixed_adapter_names), "logits_mixed", tol);
    });
    for (const kind of ["cat", "linear"] as const) {
      await t.step(`addWeightedAdapter ${kind}`, async () => {
        const { adapters, weights } = meta[kind];
        pm.addWeightedAdapter(adapters, weights, kind, { combinationType: kind });
        const cfg = pm.peftConfig[kind];
        const ref = peftAdapterConfig(kind);
        assert.deepEqual([cfg.r, cfg.loraAlpha, cfg.useRslora], [ref.r, ref.lora_alpha, ref.use_rslora]);
        assert.deepEqual(new Set(cfg.targetModules as string[]), new Set(ref.target_modules as string[]));
        const files = peftAdapterTensors(kind);
        const layers = pm.adapterLayers(kind);
        assert.deepEqual(layers.length * 2, files.size);
        for (const [path, a] of layers) {
          for (const [child, w] of [["lora_A", a.lora_A.weight], ["lora_B", a.lora_B.weight]] as const) {
            const refW = files.get(`base_model.model.${path}.${child}.weight`)!;
            assert.deepEqual([...w.shape], refW.shape, `${path}.${child}`);
            const err = relErr(await w.data(), refW.data);
            assert(err <= tol, `${kind} ${path}.${child}: relative error ${err} > ${tol}`);
          }
        }
        pm.setAdapter(kind);
        assertClose(await logitsOf(pm), `logits_${kind}`, tol);
      });
    }
  } finally {
    pm.unload();
  }
}
