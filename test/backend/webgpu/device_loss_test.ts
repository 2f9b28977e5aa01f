/**
 * Losing the GPU: a device destroyed in the middle of training (through our Device, through the
 * GPUDevice underneath, or at an arbitrary moment from a timer) ends the run with a DeviceError — never a
 * TypeError, never a hang — and a new `webgpuDevice()` then trains normally. Allocations past the
 * adapter's limits fail at once with a DeviceError naming the op, the shape and the limit; an
 * out-of-memory error reported by WebGPU's error scopes becomes a DeviceError on the next read.
 */
import assert from "node:assert/strict";
import {
  AdamW,
  add,
  applyLoraToLinearModules,
  cpuDevice,
  Device,
  DeviceError,
  embedding,
  llamaConfig,
  LlamaForCausalLM,
  manualSeed,
  matmul,
  PeftConfig,
  tensor,
  train,
  webgpuDevice,
  zeros,
} from "../../../mod.ts";
import { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import { relErr } from "../../helpers.ts";
import { gpuTest } from "./gpu.ts";

/** Longest a failing run may take to report its error before the test calls it a hang. */
const HANG_MS = 30_000;

/** `p`, or a rejection saying that `what` hung when it does not settle within {@link HANG_MS}. */
async function bounded<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${HANG_MS} ms`)), HANG_MS);
  });
  try {
    return await Promise.race([p, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** A one-layer LoRA Llama on `device`, the same weights and adapters every call. */
function loraLlama(device: Device): LlamaForCausalLM {
  const config = llamaConfig({
    vocabSize: 24,
    hiddenSize: 16,
    intermediateSize: 24,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
    numKeyValueHeads: 1,
  });
  const model = new LlamaForCausalLM(config, { device, seed: 9 });
  manualSeed(17);
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj", "*.v_proj"], dim: 2 }));
  return model;
}

const BATCHES = [{ inputIds: [[1, 2, 3, 4, 5, 6]] }, { inputIds: [[6, 5, 4, 3, 2, 1]] }];

/** Trains `steps` steps on `device` and returns the losses. */
async function trainOn(device: Device, steps: number): Promise<number[]> {
  const model = loraLlama(device);
  const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
  return (await train({ model, optimizer, batches: BATCHES, steps, logEvery: 1 })).losses;
}

/** A fresh `webgpuDevice()` trains like the CPU reference. */
async function assertFreshDeviceTrains(): Promise<void> {
  const fresh = await webgpuDevice();
  try {
    assert.equal(fresh.lostReason, null);
    const ours = await bounded("training on a fresh device", trainOn(fresh, 3));
    const ref = await trainOn(cpuDevice(), 3);
    assert.ok(relErr(ours, ref) < 1e-4, `fresh device losses ${ours} vs CPU ${ref}`);
  } finally {
    fresh.destroy();
  }
}

/** Runs training on a new device, calling `destroy(device)` from the batch function at step 3. */
async function trainAndDestroyAtStep3(
  destroy: (device: Device) => void,
): Promise<{ device: Device; error: unknown }> {
  const device = await webgpuDevice();
  const model = loraLlama(device);
  const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
  const run = train({
    model,
    optimizer,
    batches: (step) => {
      if (step === 3) destroy(device);
      return BATCHES[step % 2];
    },
    steps: 8,
    logEvery: 2,
  });
  const error = await bounded("train() on a destroyed device", run).then(() => null, (e) => e);
  return { device, error };
}

gpuTest(
  "Device.destroy() mid-training: train() rejects with a DeviceError naming the loss; a new device trains",
  async () => {
    const { device, error } = await trainAndDestroyAtStep3((d) => d.destroy());
    assert.ok(error instanceof DeviceError, `expected a DeviceError, got ${error}`);
    assert.match(error.message, /lost \(destroyed by the caller\)/);
    assert.throws(() => tensor([1], [1], { device }), DeviceError);
    await assertFreshDeviceTrains();
  },
);

gpuTest(
  "GPUDevice.destroy() underneath mid-training: train() rejects with a DeviceError; a new device trains",
  async () => {
    const { device, error } = await trainAndDestroyAtStep3((d) =>
      (d.backend as WebGpuBackend).gpuDevice.destroy()
    );
    assert.ok(error instanceof DeviceError, `expected a DeviceError, got ${error}`);
    await (device.backend as WebGpuBackend).gpuDevice.lost;
    assert.notEqual(device.lostReason, null, "the lost promise marks the Device lost");
    assert.throws(
      () => tensor([1], [1], { device }),
      (e) => e instanceof DeviceError && /lost/.test(e.message),
    );
    await assertFreshDeviceTrains();
  },
);

gpuTest(
  "a device destroyed by a timer at an arbitrary moment of training ends it with a DeviceError",
  async () => {
    const device = await webgpuDevice();
    const model = loraLlama(device);
    const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
    let completed = 0;
    // Reads every step give the timer many chances to land: inside a read, between steps, or mid-report.
    const run = train({
      model,
      optimizer,
      batches: BATCHES,
      steps: 2000,
      logEvery: 1,
      onProgress: (p) => (completed = p.step),
    });
    const timer = setTimeout(() => (device.backend as WebGpuBackend).gpuDevice.destroy(), 150);
    const error = await bounded("train() with a device destroyed by a timer", run).then(() => null, (e) => e);
    clearTimeout(timer);
    assert.ok(error instanceof DeviceError, `expected a DeviceError after ${completed} steps, got ${error}`);
    assert.ok(completed < 2000, "the run stopped early");
    await assertFreshDeviceTrains();
  },
);

gpuTest(
  "a read or sync waiting on the GPU when the device is destroyed rejects with a DeviceError",
  async () => {
    const device = await webgpuDevice();
    const x = tensor([1, 2, 3, 4], [2, 2], { device });
    const y = matmul(x, x);
    const pending = y.data();
    (device.backend as WebGpuBackend).gpuDevice.destroy();
    await assert.rejects(() => bounded("a read in flight", pending), DeviceError);
    await assert.rejects(() => bounded("sync after destroy", device.backend.sync()), DeviceError);
    await assert.rejects(() => bounded("a read after destroy", y.data()), DeviceError);
  },
);

gpuTest(
  "allocations past the adapter's limits are immediate DeviceErrors naming op, shape and limit",
  async () => {
    const device = await webgpuDevice();
    try {
      const limit = (device.backend as WebGpuBackend).gpuDevice.limits.maxStorageBufferBindingSize;
      const cols = 4096, rows = Math.floor(limit / 4 / cols) + 1;
      const before = device.backend.memory();
      const tooBig = (op: string, shape: string) => (e: unknown) =>
        e instanceof DeviceError && e.message.includes(op) && e.message.replaceAll(" ", "").includes(shape) &&
        e.message.includes(String(limit)) && e.message.includes("maxStorageBufferBindingSize");
      assert.throws(() => zeros([rows, cols], { device }), tooBig("zeros", `[${rows},${cols}]`));
      // Outputs too large from small inputs: a broadcast sum and an embedding lookup.
      const col = zeros([rows, 1], { device }), row = zeros([1, cols], { device });
      assert.throws(() => add(col, row), tooBig("add", `[${rows},${cols}]`));
      const table = zeros([2, cols], { device });
      const ids = Array.from({ length: rows }, (_, i) => i % 2);
      assert.throws(() => embedding(ids, table), tooBig("gatherRows", `[${rows},${cols}]`));
      for (const t of [col, row, table]) t.dispose();
      assert.deepEqual(device.backend.memory(), before, "nothing was left allocated by the failures");
      // The device is still usable.
      const t = tensor([1, 2], [2], { device });
      assert.deepEqual(Array.from(await t.add(t).data()), [2, 4]);
    } finally {
      device.destroy();
    }
  },
);

/**
 * A GPUDevice whose next "out-of-memory" error scope reports an error, as WebGPU does when a buffer
 * cannot be allocated. Real exhaustion is not provoked: on a software adapter buffers are host memory
 * committed lazily, so filling it would meet the operating system's OOM killer, not a WebGPU error.
 */
function injectOutOfMemory(real: GPUDevice): { device: GPUDevice; arm: () => void } {
  const filters: GPUErrorFilter[] = [];
  let armed = false;
  const device = new Proxy(real, {
    get(target, key) {
      if (key === "pushErrorScope") {
        return (filter: GPUErrorFilter) => {
          filters.push(filter);
          target.pushErrorScope(filter);
        };
      }
      if (key === "popErrorScope") {
        return async () => {
          const filter = filters.pop();
          const real = await target.popErrorScope();
          if (filter !== "out-of-memory" || !armed) return real;
          armed = false;
          return { message: "injected: not enough memory left to allocate the buffer" } as GPUError;
        };
      }
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { device, arm: () => (armed = true) };
}

gpuTest(
  "an out-of-memory error from WebGPU's error scopes is a DeviceError on the next read, reported once",
  async () => {
    const adapter = (await navigator.gpu.requestAdapter())!;
    const real = await adapter.requestDevice();
    const { device: gpuDevice, arm } = injectOutOfMemory(real);
    const device = new Device(new WebGpuBackend(gpuDevice, "oom-injecting"), "webgpu", "oom-injecting");
    try {
      const a = tensor([1, 2, 3], [3], { device });
      assert.deepEqual(Array.from(await a.data()), [1, 2, 3]);
      arm();
      const big = zeros([1000, 7], { device }); // a size no earlier buffer had: a fresh allocation
      await assert.rejects(
        () => big.data(),
        (e) =>
          e instanceof DeviceError && /out of memory/.test(e.message) && /zeros|fill/.test(e.message) &&
          e.message.includes("7000"),
      );
      assert.deepEqual(Array.from(await a.add(a).data()), [2, 4, 6], "reported once; the device goes on");
    } finally {
      device.destroy();
    }
  },
);
