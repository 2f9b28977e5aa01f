// Runs a LoRA forward/backward through the built npm package; prints JSON for the test to check.
// Usage: node test/npm/smoke.mjs <path to npm/esm/mod.js>
const lib = await import(process.argv[2] ?? globalThis.Bun?.argv[2]);
const { Module, Linear, PeftConfig, applyLoraToLinearModules, tensor, crossEntropy, cpuDevice } = lib;
const model = new Module();
model.q_proj = new Linear(6, 5, { seed: 1 });
const count = applyLoraToLinearModules(
  model,
  new PeftConfig({ targetModules: ["q_proj"], dim: 2, alpha: 4 }),
);
model.q_proj.lora_B.weight = tensor([0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0], [5, 2], {
  requiresGrad: true,
});
const x = tensor(Array.from({ length: 18 }, (_, i) => Math.sin(i)), [3, 6]);
const y = model.q_proj.forward(x);
const loss = crossEntropy(y, [0, 3, 4]);
loss.backward();
console.log(JSON.stringify({
  count,
  device: cpuDevice().kind,
  loss: (await loss.data())[0],
  gradA: Array.from(await model.q_proj.lora_A.weight.grad.data()),
  gradB: Array.from(await model.q_proj.lora_B.weight.grad.data()),
}));
