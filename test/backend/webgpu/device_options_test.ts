/**
 * webgpuDevice's options with bad values, and dtype options that a WebGPU device cannot honour. A bad
 * option value is the caller's mistake, not the device's: a ConfigError naming webgpuDevice and the option,
 * as for every other function's options (options_test.ts).
 */
import assert from "node:assert/strict";
import {
  ConfigError,
  DTypeError,
  isLoraLinear,
  Linear,
  llamaConfig,
  LlamaForCausalLM,
  patchLinearModule,
  webgpuDevice,
} from "../../../mod.ts";
import { gpuTest } from "./gpu.ts";

const cases: [option: string, opts: unknown][] = [
  ["gpu", { gpu: {} }],
  ["gpu", { gpu: 5 }],
  ["adapter", { adapter: {} }],
  ["adapter", { adapter: "llvmpipe" }],
  ["powerPreference", { powerPreference: "fast" }],
  ["powerPreference", { powerPreference: 1 }],
  ["powerPrefernce", { powerPrefernce: "low-power" }],
  ["options", 5],
];

for (const [option, opts] of cases) {
  Deno.test(`options: webgpuDevice(${JSON.stringify(opts)}) is a ConfigError naming ${option}`, async () => {
    let device = null;
    const error = await webgpuDevice(opts as never).then((d) => (device = d, null), (e) => e);
    (device as { destroy(): void } | null)?.destroy();
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error ?? "a device"}`);
    assert.ok(error.message.startsWith("webgpuDevice") && error.message.includes(option), error.message);
  });
}

gpuTest(
  "options: f64 on a WebGPU device is a DTypeError up front, the layer and model untouched",
  (device) => {
    const layer = new Linear(4, 3, { device, seed: 1 });
    assert.throws(
      () => patchLinearModule(layer, { loraDtype: "f64" }),
      (e) => e instanceof DTypeError && e.message.includes("f64"),
    );
    assert.equal(isLoraLinear(layer), false);
    assert.ok(layer.weight.requiresGrad);
    const config = llamaConfig({
      vocabSize: 8,
      hiddenSize: 4,
      intermediateSize: 4,
      numHiddenLayers: 1,
      numAttentionHeads: 1,
      numKeyValueHeads: 1,
    });
    assert.throws(
      () => new LlamaForCausalLM(config, { device, dtype: "f64" }),
      (e) => e instanceof DTypeError && e.message.startsWith("LlamaForCausalLM") && e.message.includes("f64"),
    );
  },
);
