/**
 * Isolation: two models training on one device, and work on two devices in one process (the CPU with a
 * WebGPU device, and two WebGPU devices from two `webgpuDevice()` calls), give exactly the numbers each
 * gives alone; mixing tensors of two devices is a DeviceError naming both.
 */
import assert from "node:assert/strict";
import {
  AdamW,
  add,
  applyLoraToLinearModules,
  concat,
  cpuDevice,
  crossEntropy,
  type Device,
  DeviceError,
  Linear,
  linear,
  LinearLoRA,
  llamaConfig,
  LlamaForCausalLM,
  loraLinear,
  manualSeed,
  matmul,
  Module,
  PeftConfig,
  randn,
  rmsNorm,
  type Tensor,
  tensor,
  tidy,
  train,
  webgpuDevice,
} from "../../mod.ts";
import { gpuTest } from "./webgpu/gpu.ts";

/** A one-layer LoRA Llama; `seed` varies weights and adapters, the same for equal seeds. */
function loraLlama(device: Device, seed: number): LlamaForCausalLM {
  const config = llamaConfig({
    vocabSize: 24,
    hiddenSize: 16,
    intermediateSize: 24,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
    numKeyValueHeads: 1,
  });
  const model = new LlamaForCausalLM(config, { device, seed });
  manualSeed(seed * 31);
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj", "*.o_proj"], dim: 2 }));
  return model;
}

/** Batches that differ per seed, so that two models do different work. */
function batchesFor(seed: number) {
  return [0, 1].map((b) => ({
    inputIds: [Array.from({ length: 6 }, (_, i) => (seed * 7 + b * 5 + i * 3) % 24)],
  }));
}

interface Run {
  losses: number[];
  weights: number[][];
}

/** A training run of `model` (a read every step, so concurrent runs interleave step by step). */
async function run(model: LlamaForCausalLM, seed: number): Promise<Run> {
  const optimizer = new AdamW(model.trainableParameters(), { lr: 2e-2 });
  const { losses } = await train({ model, optimizer, batches: batchesFor(seed), steps: 5, logEvery: 1 });
  const weights = await Promise.all(model.trainableParameters().map(async (p) => Array.from(await p.data())));
  return { losses, weights };
}

gpuTest(
  "two LoRA models training concurrently on one WebGPU device equal each one alone, bit for bit",
  async () => {
    const device = await webgpuDevice();
    try {
      const aloneA = await run(loraLlama(device, 1), 1);
      const aloneB = await run(loraLlama(device, 2), 2);
      const a = loraLlama(device, 1), b = loraLlama(device, 2);
      const [togetherA, togetherB] = await Promise.all([run(a, 1), run(b, 2)]);
      assert.deepEqual(togetherA, aloneA);
      assert.deepEqual(togetherB, aloneB);
      assert.notDeepEqual(aloneA.losses, aloneB.losses, "the two models do different work");
    } finally {
      device.destroy();
    }
  },
);

/** A LoRA layer, its optimizer and data; `steps` hand-written steps without any read in between. */
function loraLayer(device: Device, seed: number) {
  const layer = new LinearLoRA(new Linear(12, 6, { device, seed }), { dim: 3, alpha: 6, seed: seed + 1 });
  const optimizer = new AdamW([layer.lora_A.weight, layer.lora_B.weight], { lr: 5e-2 });
  const x = randn([5, 12], { device, seed: seed + 2 });
  const targets = [0, 1, 2, 3, 4].map((i) => (i + seed) % 6);
  const step = () =>
    tidy(() => {
      crossEntropy(layer.forward(x), targets).backward();
      optimizer.step();
      optimizer.zeroGrad();
    });
  const weights =
    async () => [Array.from(await layer.lora_A.weight.data()), Array.from(await layer.lora_B.weight.data())];
  return { step, weights };
}

gpuTest(
  "two LoRA layers whose steps alternate inside the same GPU command batches equal each alone",
  async () => {
    const device = await webgpuDevice();
    try {
      const alone = [];
      for (const seed of [10, 20]) {
        const l = loraLayer(device, seed);
        for (let s = 0; s < 20; s++) l.step();
        alone.push(await l.weights());
      }
      const a = loraLayer(device, 10), b = loraLayer(device, 20);
      for (let s = 0; s < 20; s++) {
        a.step();
        b.step();
      }
      assert.deepEqual(await a.weights(), alone[0]);
      assert.deepEqual(await b.weights(), alone[1]);
    } finally {
      device.destroy();
    }
  },
);

/** Calls that mix a tensor of `a`'s device with tensors of `b`'s, each expected to be a DeviceError. */
function mixedDeviceCalls(a: Device, b: Device): [string, () => unknown][] {
  const on = (d: Device, shape: number[], seed: number) => randn(shape, { device: d, seed });
  const layerOnB = new LinearLoRA(new Linear(4, 3, { device: b, seed: 1 }), { dim: 2, seed: 2 });
  return [
    ["add", () => add(on(a, [2, 4], 1), on(b, [2, 4], 2))],
    ["matmul", () => matmul(on(a, [2, 4], 1), on(b, [4, 3], 2))],
    ["linear", () => linear(on(a, [2, 4], 1), on(b, [3, 4], 2))],
    ["rmsNorm", () => rmsNorm(on(a, [2, 4], 1), on(b, [4], 2), 1e-6)],
    ["concat", () => concat([on(a, [2, 4], 1), on(b, [2, 4], 2)], 0)],
    [
      "loraLinear",
      () => loraLinear(on(a, [2, 4], 1), on(b, [3, 4], 2), null, on(b, [2, 4], 3), on(b, [3, 2], 4), 1),
    ],
    ["loraLinear", () => layerOnB.forward(on(a, [2, 4], 5))],
  ];
}

/** Asserts that every mixed call is a DeviceError naming its op and both devices. */
function assertMixingFails(a: Device, b: Device, extra: RegExp | null): void {
  for (const [op, call] of mixedDeviceCalls(a, b)) {
    assert.throws(call, (e: unknown) => {
      assert.ok(e instanceof DeviceError, `${op}: expected a DeviceError, got ${e}`);
      assert.ok(e.message.startsWith(op), `${op}: ${e.message}`);
      assert.ok(e.message.includes(String(a)) && e.message.includes(String(b)), `${op}: ${e.message}`);
      if (extra) assert.match(e.message, extra);
      return true;
    });
  }
}

gpuTest("CPU and WebGPU tensors mixed in any op are DeviceErrors naming both devices", async () => {
  const gpu = await webgpuDevice();
  try {
    const cpu = cpuDevice();
    assertMixingFails(cpu, gpu, null);
    assertMixingFails(gpu, cpu, null);
    // An optimizer whose parameter lives on the GPU but whose gradient was put on the CPU.
    const p = randn([3], { device: gpu, seed: 1, requiresGrad: true });
    p.grad = randn([3], { device: cpu, seed: 2 });
    assert.throws(() => new AdamW([p], { lr: 0.1 }).step(), DeviceError);
    // A GPU tensor loaded into a CPU module must be moved first.
    const holder = Object.assign(new Module(), { w: tensor([0, 0, 0], [3]) });
    assert.throws(
      () => holder.loadStateDict({ w: randn([3], { device: gpu, seed: 3 }) }),
      (e: unknown) => e instanceof DeviceError && e.message.includes(String(gpu)) && /\bw\b/.test(e.message),
    );
  } finally {
    gpu.destroy();
  }
});

gpuTest(
  "two webgpuDevice() devices: mixing is a DeviceError that tells the same-named devices apart",
  async () => {
    const [d1, d2] = [await webgpuDevice(), await webgpuDevice()];
    try {
      assert.notEqual(d1, d2);
      assertMixingFails(d1, d2, /distinct devices with the same name/);
      const holder = Object.assign(new Module(), { w: tensor([0, 0, 0], [3], { device: d1 }) });
      assert.throws(
        () => holder.loadStateDict({ w: randn([3], { device: d2, seed: 3 }) }),
        (e: unknown) => e instanceof DeviceError && /different device of the same name/.test(e.message),
      );
    } finally {
      d1.destroy();
      d2.destroy();
    }
  },
);

/** Training runs on two devices at once (interleaved at every read) equal the same runs one by one. */
async function assertIndependent(makeA: () => Promise<Device>, makeB: () => Promise<Device>): Promise<void> {
  const alone: Run[] = [];
  for (const [make, seed] of [[makeA, 3], [makeB, 4]] as const) {
    const d = await make();
    alone.push(await run(loraLlama(d, seed), seed));
    if (d.kind === "webgpu") d.destroy();
  }
  const [a, b] = [await makeA(), await makeB()];
  try {
    const together = await Promise.all([run(loraLlama(a, 3), 3), run(loraLlama(b, 4), 4)]);
    assert.deepEqual(together[0], alone[0]);
    assert.deepEqual(together[1], alone[1]);
  } finally {
    for (const d of [a, b]) if (d.kind === "webgpu") d.destroy();
  }
}

gpuTest("CPU and WebGPU training at the same time: each gives exactly its numbers alone", async () => {
  await assertIndependent(() => Promise.resolve(cpuDevice()), () => webgpuDevice());
});

gpuTest("two WebGPU devices training at the same time: each gives exactly its numbers alone", async () => {
  await assertIndependent(() => webgpuDevice(), () => webgpuDevice());
});

gpuTest("destroying one of two WebGPU devices leaves the other's tensors and training intact", async () => {
  const [d1, d2] = [await webgpuDevice(), await webgpuDevice()];
  try {
    const kept: Tensor = tensor([1, 2, 3], [3], { device: d2 });
    const model = loraLlama(d2, 5);
    const before = await run(loraLlama(cpuDevice(), 5), 5);
    d1.destroy();
    assert.deepEqual(Array.from(await kept.add(kept).data()), [2, 4, 6]);
    const after = await run(model, 5);
    const close = after.losses.every((l, i) =>
      Math.abs(l - before.losses[i]) <= 1e-4 * Math.abs(before.losses[i])
    );
    assert.ok(close, `d2 losses ${after.losses} vs CPU ${before.losses}`);
  } finally {
    d2.destroy();
  }
});
