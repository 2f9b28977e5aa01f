// Runs one LoRA training step (forward, cross-entropy, backward, AdamW) through the built npm package on
// WebGPU and on the CPU reference, in Node with the `webgpu` package (Dawn) or in Bun with `bun-webgpu`;
// prints JSON for test/npm/npm_package_test.ts to compare.
// Usage: node|bun test/npm/webgpu_smoke.mjs <path to npm/esm/mod.js>
const lib = await import(process.argv[2]);
const { AdamW, applyLoraToLinearModules, cpuDevice, crossEntropy, Linear, manualSeed, Module, PeftConfig } =
  lib;
const { tensor, webgpuDevice } = lib;

/** The runtime's own WebGPU entry point, as a user of that runtime would get it. */
async function runtimeGpu() {
  if (globalThis.Bun !== undefined) {
    const { createGPUInstance } = await import("bun-webgpu");
    return createGPUInstance();
  }
  const { create } = await import("webgpu");
  return create([]);
}

/** One step on `device` from the same seeded weights; the numbers a user would read back. */
async function loraStep(device) {
  manualSeed(7);
  const model = new Module();
  model.q_proj = new Linear(24, 10, { seed: 3, device });
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["q_proj"], dim: 4, alpha: 8 }));
  const b = Array.from({ length: 40 }, (_, i) => Math.cos(i) / 4);
  model.q_proj.lora_B.weight = tensor(b, [10, 4], { device, requiresGrad: true });
  const x = tensor(Array.from({ length: 7 * 24 }, (_, i) => Math.sin(i * 0.37)), [7, 24], { device });
  const labels = [0, 3, 9, 1, 4, 4, 7];
  const optimizer = new AdamW(model.trainableParameters(), { lr: 0.05 });
  const loss = crossEntropy(model.q_proj.forward(x), labels);
  loss.backward();
  const result = {
    loss: (await loss.data())[0],
    gradA: Array.from(await model.q_proj.lora_A.weight.grad.data()),
    gradB: Array.from(await model.q_proj.lora_B.weight.grad.data()),
  };
  optimizer.step();
  result.lossAfter = (await crossEntropy(model.q_proj.forward(x), labels).data())[0];
  result.loraAAfter = Array.from(await model.q_proj.lora_A.weight.data());
  return result;
}

const device = await webgpuDevice({ gpu: await runtimeGpu() });
const gpu = await loraStep(device);
const cpu = await loraStep(cpuDevice());
console.log(
  JSON.stringify({ kind: device.kind, name: device.name, isSoftware: device.isSoftware, gpu, cpu }),
);
device.destroy();
// Dawn's Node binding keeps its instance alive after the device is gone.
if (globalThis.process?.exit) process.exit(0);
