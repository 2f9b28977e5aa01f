/**
 * GPU memory accounting over long runs: live buffers and bytes stay flat through 1,000 LoRA training
 * steps on WebGPU, dispose is idempotent, a disposed tensor is a DeviceError everywhere, and moving a
 * model to the GPU and back leaves nothing behind on either device.
 *
 * Each test opens its own device: counts are per device, so tensors of other tests (and their
 * finalizers) cannot move them.
 */
import assert from "node:assert/strict";
import {
  AdamW,
  applyLoraToLinearModules,
  cpuDevice,
  crossEntropy,
  type Device,
  DeviceError,
  Linear,
  LinearLoRA,
  llamaConfig,
  LlamaForCausalLM,
  manualSeed,
  Module,
  PeftConfig,
  randn,
  tensor,
  tidy,
  train,
  webgpuDevice,
  zeros,
} from "../../../mod.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import { relErr } from "../../helpers.ts";
import { gpuTest } from "./gpu.ts";

type Counts = { buffers: number; bytes: number };

/** Runs `fn` on a fresh WebGPU device, destroyed afterwards whatever happens. */
async function withDevice(fn: (device: Device) => Promise<void>): Promise<void> {
  const device = await webgpuDevice();
  try {
    await fn(device);
  } finally {
    device.destroy();
  }
}

/** A one-layer Llama small enough for hundreds of steps on a software adapter. */
function tinyLlama(device: Device, tie = false): LlamaForCausalLM {
  const config = llamaConfig({
    vocabSize: 24,
    hiddenSize: 16,
    intermediateSize: 24,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
    numKeyValueHeads: 1,
    tieWordEmbeddings: tie,
  });
  return new LlamaForCausalLM(config, { device, seed: 5 });
}

const STEPS = 1000;
/** Steps before the counts must hold still: the first creates the optimizer's moments. */
const WARMUP = 1;

gpuTest("1,000 LoRA training steps on WebGPU keep live buffers and bytes exactly flat", async () => {
  await withDevice(async (device) => {
    // Dropout exercises the mask kernels too, with a fresh seed every step.
    const layer = new LinearLoRA(new Linear(16, 8, { device, seed: 1 }), {
      dim: 4,
      alpha: 8,
      seed: 2,
      dropout: 0.1,
    });
    const opt = new AdamW([layer.lora_A.weight, layer.lora_B.weight], { lr: 1e-2 });
    const x = randn([6, 16], { device, seed: 3 });
    const targets = [0, 1, 2, 3, 4, 5];
    const perStep: Counts[] = [];
    const losses = new Map<number, number>();
    for (let step = 1; step <= STEPS; step++) {
      const loss = tidy(() => {
        const l = crossEntropy(layer.forward(x), targets);
        l.backward();
        opt.step();
        opt.zeroGrad();
        return l;
      });
      // Reading back waits for the GPU (≥ 11 ms in Deno), so only a few losses are read.
      if (step === 1 || step % 250 === 0) losses.set(step, await loss.item());
      loss.dispose();
      perStep.push(device.backend.memory());
    }
    const settled = perStep[WARMUP - 1];
    const drift = perStep.findIndex((c, i) =>
      i >= WARMUP && (c.buffers !== settled.buffers || c.bytes !== settled.bytes)
    );
    assert.equal(
      drift,
      -1,
      `step ${drift + 1}: ${JSON.stringify(perStep[drift])} differs from ${JSON.stringify(settled)}`,
    );
    // What stays alive: x, the frozen weight and bias, lora_A, lora_B and AdamW's two packed moment arrays
    // (one pair per device and dtype, covering both adapter weights).
    assert.deepEqual(settled, { buffers: 7, bytes: 4 * (6 * 16 + 8 * 16 + 8 + 3 * (4 * 16 + 8 * 4)) });
    console.log(
      `LoRA loop, ${STEPS} steps: ${settled.buffers} live buffers, ${settled.bytes} bytes throughout`,
    );
    assert.ok(losses.get(STEPS)! < 0.5 * losses.get(1)!, `training made progress: ${[...losses.entries()]}`);
  });
});

gpuTest("train() on a LoRA Llama on WebGPU keeps live buffers and bytes flat between reports", async () => {
  await withDevice(async (device) => {
    const model = tinyLlama(device);
    manualSeed(11);
    applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj", "*.v_proj"], dim: 2 }));
    const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
    const seen: Counts[] = [];
    const result = await train({
      model,
      optimizer,
      batches: [{ inputIds: [[1, 2, 3, 4, 5, 6]] }, { inputIds: [[7, 8, 9, 10, 11, 12]] }],
      steps: 60,
      logEvery: 10,
      onProgress: () => seen.push(device.backend.memory()),
    });
    assert.equal(seen.length, 6);
    for (const c of seen.slice(1)) assert.deepEqual(c, seen[0], `counts per report: ${JSON.stringify(seen)}`);
    assert.ok(result.losses[59] < result.losses[0]);
    console.log(`train() on a LoRA Llama: ${seen[0].buffers} live buffers, ${seen[0].bytes} bytes`);
  });
});

gpuTest("dispose on WebGPU is idempotent and frees exactly its own buffer and bytes", async () => {
  await withDevice(async (device) => {
    const a = tensor([1, 2, 3], [3], { device });
    const b = tensor([4, 5, 6, 7, 8], [5], { device });
    const before = device.backend.memory();
    a.dispose();
    a.dispose();
    a[Symbol.dispose]();
    assert.deepEqual(device.backend.memory(), { buffers: before.buffers - 1, bytes: before.bytes - 12 });
    assert.deepEqual(Array.from(await b.data()), [4, 5, 6, 7, 8], "the other tensor is untouched");
    b.dispose();
    assert.deepEqual(device.backend.memory(), { buffers: before.buffers - 2, bytes: before.bytes - 32 });
  });
});

gpuTest(
  "a disposed WebGPU tensor is a DeviceError in ops, reads, moves, backward and loadStateDict",
  async () => {
    await withDevice(async (device) => {
      const t = tensor([1, 2, 3, 4], [2, 2], { device, requiresGrad: true });
      const other = tensor([1, 1, 1, 1], [2, 2], { device });
      t.dispose();
      const disposed = (e: unknown) =>
        e instanceof DeviceError && /disposed/.test(e.message) && e.message.includes("[2,2]");
      assert.throws(() => t.add(other), disposed);
      assert.throws(() => other.matmul(t), disposed);
      await assert.rejects(() => t.data(), disposed);
      await assert.rejects(() => t.to(cpuDevice()), disposed);
      const holder = Object.assign(new Module(), { w: tensor([0, 0, 0, 0], [2, 2], { device }) });
      assert.throws(() => holder.loadStateDict({ w: t }), disposed);
      assert.deepEqual(Array.from(await holder.w.data()), [0, 0, 0, 0], "a failed load changes nothing");
      const layer = new Linear(2, 2, { device, seed: 1 });
      layer.weight.dispose();
      assert.throws(() => layer.forward(other), disposed);
    });
  },
);

gpuTest(
  "a destroyed device: dispose stays silent, everything else is a DeviceError naming the loss",
  async () => {
    const device = await webgpuDevice();
    const t = tensor([1, 2], [2], { device });
    device.destroy();
    device.destroy();
    t.dispose();
    t.dispose();
    const lost = (e: unknown) => e instanceof DeviceError && /lost/.test(e.message);
    assert.throws(() => tensor([1], [1], { device }), lost);
    assert.throws(() => randn([2], { device, seed: 1 }), lost);
  },
);

/** Every parameter's values, by name. */
async function snapshot(model: Module): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, p] of model.namedParameters()) out.set(name, (await p.data()) as Float32Array);
  return out;
}

gpuTest(
  "Module.to(gpu) and back: values, sharing and identity kept, no memory left on either device",
  async () => {
    await withDevice(async (device) => {
      const cpu = cpuDevice();
      const model = tinyLlama(cpu, true);
      manualSeed(3);
      applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj", "*.down_proj"], dim: 2 }));
      const params = model.parameters();
      const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
      const ids = [[3, 1, 4, 1, 5, 9, 2, 6]];
      const cpuBefore = cpu.backend.memory();
      // Leaves one CPU tensor behind: the rotate-half matrix the model caches per device.
      const logits = tidy(() => model.forward(ids).logits);
      const logitsCpu = logits.dataSync();
      logits.dispose();
      const unique = new Set(params);
      const paramBytes = [...unique].reduce((n, p) => n + 4 * p.size, 0);

      await model.to(device);
      assert.ok(model.parameters().every((p, i) => p === params[i] && p.device === device));
      assert.equal(model.lm_head.weight, model.model.embed_tokens.weight, "the tied head stays shared");
      assert.deepEqual(device.backend.memory(), { buffers: unique.size, bytes: paramBytes });
      // The CPU keeps nothing: neither the parameters nor the cached rotate-half matrix.
      assert.deepEqual(cpu.backend.memory(), {
        buffers: cpuBefore.buffers - unique.size,
        bytes: cpuBefore.bytes - paramBytes,
      });
      const onGpu = tidy(() => model.forward(ids).logits);
      const logitsGpu = await onGpu.data();
      onGpu.dispose();
      assert.ok(relErr(logitsGpu, logitsCpu) < 1e-5, `logits on the GPU: ${relErr(logitsGpu, logitsCpu)}`);

      // The optimizer made on the CPU holds the same tensor objects, so it trains them where they now are.
      await train({ model, optimizer, batches: [{ inputIds: ids }], steps: 2, logEvery: 2 });
      for (const s of optimizer.state) {
        const m = s?.expAvg; // a copy out of the packed moments: freed right away
        assert.equal(m?.device, device);
        m?.dispose();
      }
      const trained = await snapshot(model);

      await model.to(cpu);
      assert.ok(model.parameters().every((p, i) => p === params[i] && p.device === cpu));
      assert.deepEqual(await snapshot(model), trained, "values come back bit for bit");
      // AdamW packs all moments of one device and dtype into two arrays.
      assert.equal(device.memory().buffers, 2, "only the optimizer's moments (not moved by Module.to)");
      optimizer.dispose();
      assert.deepEqual(device.backend.memory(), { buffers: 0, bytes: 0 });
      assert.deepEqual(cpu.backend.memory(), cpuBefore);
    });
  },
);

gpuTest(
  "a new working set of other sizes reuses pooled buffers after one round (the oldest are evicted)",
  async () => {
    await withDevice(async (device) => {
      const rt = (device.backend as unknown as WebGpuBackend).rt;
      rt.poolFloorBytes = 1 << 20;
      let created = 0;
      const createBuffer = rt.device.createBuffer.bind(rt.device);
      rt.device.createBuffer = (d: GPUBufferDescriptor) => {
        created++;
        return createBuffer(d);
      };
      // An earlier working set: 24 tensors of 64 KiB, all freed, so the pool is full of that size.
      const round = (elements: number, count: number) => {
        const ts = Array.from({ length: count }, () => zeros([elements], { device }));
        for (const t of ts) t.dispose();
      };
      round(16384, 24);
      await device.backend.sync();
      // The new working set (other size class, fewer bytes): its first round creates its buffers, later
      // rounds find them pooled instead of creating and destroying them every time.
      round(10000, 20);
      await device.backend.sync();
      const before = created;
      for (let i = 0; i < 3; i++) round(10000, 20);
      await device.backend.sync();
      assert.equal(
        created - before,
        0,
        `buffers created by rounds 2-4 of the new working set: ${created - before}`,
      );
      assert.ok(
        rt.pooledBytes <= Math.max(rt.poolFloorBytes, rt.peakInUseBytes),
        "the pool stays within its limit",
      );
    });
  },
);
