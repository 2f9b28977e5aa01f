/** Opening WebGPU devices, picking the default device, losing devices, and size-limit errors. */
import assert from "node:assert/strict";
import {
  cpuDevice,
  defaultDevice,
  DeviceError,
  DTypeError,
  isSoftwareAdapter,
  matmul,
  tensor,
  webgpuDevice,
  zeros,
} from "../../../mod.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import { gpuTest } from "./gpu.ts";

/** A stand-in GPUAdapter with the given info, for the software-adapter detection. */
function fakeAdapter(info: Partial<GPUAdapterInfo> & { isFallbackAdapter?: boolean }): GPUAdapter {
  return { info, features: new Set(), limits: {} } as unknown as GPUAdapter;
}

Deno.test("isSoftwareAdapter flags fallback adapters and llvmpipe, lavapipe, SwiftShader by name", async () => {
  assert.equal(
    await isSoftwareAdapter(fakeAdapter({ description: "llvmpipe (LLVM 15.0.6, 256 bits)" })),
    true,
  );
  assert.equal(await isSoftwareAdapter(fakeAdapter({ device: "lavapipe" })), true);
  assert.equal(await isSoftwareAdapter(fakeAdapter({ vendor: "google", architecture: "swiftshader" })), true);
  assert.equal(
    await isSoftwareAdapter(fakeAdapter({ description: "NVIDIA H200", isFallbackAdapter: true })),
    true,
  );
  assert.equal(await isSoftwareAdapter(fakeAdapter({ description: "NVIDIA H200", vendor: "nvidia" })), false);
  assert.equal(await isSoftwareAdapter(fakeAdapter({ description: "Apple M2", vendor: "apple" })), false);
});

Deno.test("webgpuDevice: an injected GPU without adapters is a DeviceError saying so", async () => {
  const gpu = { requestAdapter: () => Promise.resolve(null) } as unknown as GPU;
  await assert.rejects(
    () => webgpuDevice({ gpu }),
    (e) => e instanceof DeviceError && /no WebGPU adapter/.test(e.message),
  );
});

Deno.test("webgpuDevice: a runtime without navigator.gpu and no injected GPU is a DeviceError", async () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "navigator")!;
  Object.defineProperty(globalThis, "navigator", { value: {}, configurable: true });
  try {
    await assert.rejects(
      () => webgpuDevice(),
      (e) => e instanceof DeviceError && /navigator\.gpu is missing/.test(e.message),
    );
    assert.equal(await defaultDevice(), cpuDevice(), "defaultDevice falls back to the CPU");
  } finally {
    Object.defineProperty(globalThis, "navigator", saved);
  }
});

gpuTest("webgpuDevice: the injected GPU object and adapter are used, with the adapter's limits", async () => {
  const adapter = (await navigator.gpu.requestAdapter())!;
  const byAdapter = await webgpuDevice({ adapter });
  const byGpu = await webgpuDevice({ gpu: navigator.gpu, powerPreference: "high-performance" });
  for (const dev of [byAdapter, byGpu]) {
    assert.equal(dev.kind, "webgpu");
    assert.equal(dev.isSoftware, await isSoftwareAdapter(adapter));
    const limits = (dev.backend as WebGpuBackend).gpuDevice.limits;
    assert.equal(limits.maxStorageBufferBindingSize, adapter.limits.maxStorageBufferBindingSize);
    assert.equal(limits.maxBufferSize, adapter.limits.maxBufferSize);
    assert.equal(limits.maxComputeWorkgroupStorageSize, adapter.limits.maxComputeWorkgroupStorageSize);
    assert.equal(dev.supportsDType("f16"), adapter.features.has("shader-f16"));
    const t = tensor([1, 2, 3], [3], { device: dev });
    assert.deepEqual(Array.from(await t.mul(t).data()), [1, 4, 9]);
    dev.destroy();
  }
});

gpuTest("an adapter without shader-f16 gives a device that refuses f16 with a DTypeError", async () => {
  const real = (await navigator.gpu.requestAdapter())!;
  const noF16 = new Proxy(real, {
    get(target, key) {
      if (key === "features") return new Set([...target.features].filter((f) => f !== "shader-f16"));
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  const dev = await webgpuDevice({ adapter: noF16 });
  assert.equal(dev.supportsDType("f16"), false);
  assert.throws(() => tensor([1, 2], [2], { device: dev, dtype: "f16" }), DTypeError);
  assert.throws(() => zeros([2], { device: dev }).cast("f16"), DTypeError);
  dev.destroy();
});

gpuTest("a lost device fails with a DeviceError on next use; the next webgpuDevice() is fresh", async () => {
  const dev = await webgpuDevice();
  const t = tensor([1, 2, 3], [3], { device: dev });
  const gpuDevice = (dev.backend as WebGpuBackend).gpuDevice;
  gpuDevice.destroy();
  await gpuDevice.lost;
  assert.notEqual(dev.lostReason, null);
  assert.throws(() => t.add(t), (e) => e instanceof DeviceError && /lost/.test(e.message));
  await assert.rejects(() => t.data(), DeviceError);
  assert.throws(() => tensor([1], [1], { device: dev }), DeviceError);
  const fresh = await webgpuDevice();
  assert.equal(fresh.lostReason, null);
  const u = tensor([1, 2, 3], [3], { device: fresh });
  assert.deepEqual(Array.from(await u.add(u).data()), [2, 4, 6]);
  fresh.destroy();
  assert.throws(() => u.add(u), DeviceError);
});

gpuTest(
  "tensors beyond maxStorageBufferBindingSize are DeviceErrors naming the op, size and limit",
  (dev) => {
    const limit = (dev.backend as WebGpuBackend).gpuDevice.limits.maxStorageBufferBindingSize;
    const n = Math.floor(limit / 4) + 1;
    assert.throws(
      () => zeros([n], { device: dev }),
      (e) => e instanceof DeviceError && e.message.includes("fill") && e.message.includes(String(limit)),
    );
    // An output too large for one binding, from small inputs.
    const side = Math.ceil(Math.sqrt(limit / 4)) + 1;
    const col = zeros([side, 1], { device: dev }), row = zeros([1, side], { device: dev });
    assert.throws(
      () => matmul(col, row),
      (e) =>
        e instanceof DeviceError && e.message.includes("matmul") &&
        e.message.includes(`[1, ${side}, ${side}]`) &&
        e.message.includes("maxStorageBufferBindingSize"),
    );
    col.dispose();
    row.dispose();
  },
);

gpuTest("a GPU validation error surfaces as a DeviceError on the next read", async (dev) => {
  const t = tensor([1, 2, 3], [3], { device: dev });
  const y = t.add(t);
  // A buffer with an invalid usage: WebGPU reports it asynchronously, never by throwing.
  (dev.backend as WebGpuBackend).gpuDevice.createBuffer({
    size: 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE,
  });
  await assert.rejects(
    () => y.data(),
    (e) => e instanceof DeviceError && /earlier GPU operation failed/.test(e.message),
  );
  // The error is reported once; the device keeps working.
  assert.deepEqual(Array.from(await y.data()), [2, 4, 6]);
});

gpuTest("defaultDevice prefers a hardware adapter, else the CPU; never a software adapter", async () => {
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  const software = adapter === null || await isSoftwareAdapter(adapter);
  const dev = await defaultDevice();
  if (software) assert.equal(dev, cpuDevice());
  else assert.equal(dev.kind, "webgpu");
  assert.equal(await defaultDevice(), dev, "the same device until it is lost");
});

gpuTest("defaultDevice returns the device given to setDefaultDevice", async () => {
  // setDefaultDevice is process-wide and has no undo, so this runs in a child process.
  const code = `
    import { cpuDevice, defaultDevice, setDefaultDevice, webgpuDevice } from "./mod.ts";
    const gpu = await webgpuDevice();
    setDefaultDevice(gpu);
    if (await defaultDevice() !== gpu) throw new Error("explicit WebGPU default ignored");
    setDefaultDevice(cpuDevice());
    if (await defaultDevice() !== cpuDevice()) throw new Error("explicit CPU default ignored");
    gpu.destroy();
  `;
  const root = new URL("../../../", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), { args: ["eval", "--ext=ts", code], cwd: root })
    .output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
});

gpuTest(
  "the library loads and runs without the GPUBufferUsage/GPUMapMode/GPUShaderStage globals",
  async () => {
    // Node's `webgpu` and Bun inject a GPU object but need not define these globals.
    const code = `
    for (const g of ["GPUBufferUsage", "GPUMapMode", "GPUShaderStage"]) delete globalThis[g];
    const { tensor, webgpuDevice } = await import("./mod.ts");
    const device = await webgpuDevice({ gpu: navigator.gpu });
    const t = tensor([1, 2, 3], [3], { device });
    const got = Array.from(await t.mul(t).data());
    if (got.join() !== "1,4,9") throw new Error("got " + got);
    device.destroy();
  `;
    const root = new URL("../../../", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), { args: ["eval", "--ext=ts", code], cwd: root })
      .output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  },
);
