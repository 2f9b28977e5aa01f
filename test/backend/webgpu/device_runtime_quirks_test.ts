/**
 * webgpuDevice on WebGPU implementations that deviate from the spec the way Node's and Bun's packages do:
 * bun-webgpu 0.1.7 rejects every `requiredLimits` entry and throws from its `isFallbackAdapter` getter;
 * both Dawn packages hand out Dawn's null backend or no adapter at all when Vulkan has only Mesa's
 * lavapipe. The misbehaving adapters here wrap the real one (lavapipe under Deno), so the device opened
 * through the fallbacks must still compute correctly.
 */
import assert from "node:assert/strict";
import { DeviceError, isSoftwareAdapter, tensor, webgpuDevice } from "../../../mod.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import { noGpu } from "./gpu.ts";

/** The message bun-webgpu 0.1.7 rejects any `requiredLimits` entry with. */
const BUN_LIMITS_ERROR = "Value must be between 0 and 0, got 8";

/**
 * An adapter behaving like bun-webgpu 0.1.7's around a real one: `requestDevice` with any required limit
 * rejects, `isFallbackAdapter` throws. With `consumeOnFailure` a rejected request also uses the adapter
 * up, as the spec allows, so only a fresh adapter can open a device.
 */
function bunLikeAdapter(real: GPUAdapter, consumeOnFailure = false): GPUAdapter & { requests: number } {
  let consumed = false;
  const adapter = {
    requests: 0,
    get info() {
      return real.info;
    },
    get features() {
      return real.features;
    },
    get limits() {
      return real.limits;
    },
    get isFallbackAdapter(): boolean {
      throw new Error("Not implemented");
    },
    requestDevice(descriptor?: GPUDeviceDescriptor): Promise<GPUDevice> {
      adapter.requests++;
      if (consumed) return Promise.reject(new Error("Adapter already consumed"));
      if (Object.keys(descriptor?.requiredLimits ?? {}).length > 0) {
        consumed = consumeOnFailure;
        return Promise.reject(new Error(BUN_LIMITS_ERROR));
      }
      return real.requestDevice(descriptor);
    },
  };
  return adapter as unknown as GPUAdapter & { requests: number };
}

/** An elementwise product and a sum on the device, against values worked out by hand. */
async function assertComputes(device: Awaited<ReturnType<typeof webgpuDevice>>): Promise<void> {
  const a = tensor([1, 2, 3, 4, 5, 6], [2, 3], { device });
  const b = tensor([1, 0, -1, 2, 0.5, 3], [2, 3], { device });
  const product = a.mul(b);
  assert.deepEqual(Array.from(await product.data()), [1, 0, -3, 8, 2.5, 18]);
  assert.deepEqual(Array.from(await product.add(a).data()), [2, 2, 0, 12, 7.5, 24]);
}

/** A GPU object whose every adapter comes from `make`. */
function gpuOf(make: () => Promise<GPUAdapter | null>): GPU {
  return { requestAdapter: make } as unknown as GPU;
}

Deno.test({
  name: "webgpuDevice: an adapter rejecting the requested limits opens with WebGPU's defaults and computes",
  ignore: noGpu,
  fn: async () => {
    const real = (await navigator.gpu.requestAdapter())!;
    const adapter = bunLikeAdapter(real);
    const device = await webgpuDevice({ adapter });
    assert.equal(adapter.requests, 2, "one request with the adapter's limits, one with the defaults");
    assert.equal(device.kind, "webgpu");
    assert.equal(device.isSoftware, await isSoftwareAdapter(real));
    // The backend plans against the limits the device really has, not the adapter's.
    const rt = (device.backend as WebGpuBackend).rt;
    const got = (device.backend as WebGpuBackend).gpuDevice.limits;
    assert.equal(rt.limits.maxStorageBufferBindingSize, got.maxStorageBufferBindingSize);
    assert.equal(rt.limits.maxComputeWorkgroupsPerDimension, got.maxComputeWorkgroupsPerDimension);
    await assertComputes(device);
    device.destroy();
  },
});

Deno.test({
  name: "webgpuDevice: when the rejected request used the adapter up, a fresh adapter from { gpu } opens",
  ignore: noGpu,
  fn: async () => {
    const handedOut: (GPUAdapter & { requests: number })[] = [];
    const gpu = gpuOf(async () => {
      const adapter = bunLikeAdapter((await navigator.gpu.requestAdapter())!, true);
      handedOut.push(adapter);
      return adapter;
    });
    const device = await webgpuDevice({ gpu });
    assert.equal(handedOut.length, 2);
    assert.deepEqual(handedOut.map((a) => a.requests), [2, 1]);
    await assertComputes(device);
    device.destroy();
  },
});

Deno.test({
  name: "webgpuDevice: a handed-in adapter that refuses every request is a DeviceError with both reasons",
  ignore: noGpu,
  fn: async () => {
    const adapter = bunLikeAdapter((await navigator.gpu.requestAdapter())!, true);
    await assert.rejects(
      () => webgpuDevice({ adapter }),
      (e) =>
        e instanceof DeviceError && e.message.includes(BUN_LIMITS_ERROR) &&
        e.message.includes("Adapter already consumed") && e.message.includes("pass { gpu }"),
    );
  },
});

Deno.test("isSoftwareAdapter survives a throwing isFallbackAdapter and reads webgpu.h's CPU adapter type", async () => {
  const throwing = {
    info: { description: "NVIDIA H200", vendor: "nvidia" },
    get isFallbackAdapter(): boolean {
      throw new Error("Not implemented");
    },
  } as unknown as GPUAdapter;
  assert.equal(await isSoftwareAdapter(throwing), false);
  // bun-webgpu reports SwiftShader as adapterType 3 (WGPUAdapterType_CPU) with isFallbackAdapter false.
  const cpuType = { info: { description: "Some driver", adapterType: 3, isFallbackAdapter: false } };
  assert.equal(await isSoftwareAdapter(cpuType as unknown as GPUAdapter), true);
});

/** What the no-adapter errors must tell a Node or Bun user: Dawn's requirement and the way out. */
function assertSaysWhatToDo(e: unknown): boolean {
  assert.ok(e instanceof DeviceError, String(e));
  assert.match(e.message, /lavapipe/);
  assert.match(e.message, /shaderUniform\*ArrayDynamicIndexing/);
  assert.ok(e.message.includes("VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json"), e.message);
  assert.match(e.message, /apt-get install chromium/);
  // The user already has the package: the error must not send them to install it.
  assert.doesNotMatch(e.message, /install .*'webgpu'|npm install/);
  return true;
}

Deno.test("webgpuDevice: a GPU object without adapters names Dawn's requirement and SwiftShader", async () => {
  await assert.rejects(() => webgpuDevice({ gpu: gpuOf(() => Promise.resolve(null)) }), assertSaysWhatToDo);
});

Deno.test("webgpuDevice: Dawn's null backend (bun-webgpu without a Vulkan driver) is never opened", async () => {
  let opened = 0;
  const nullBackend = {
    info: { vendor: "", architecture: "", device: "null-backend", description: "", backendType: 1 },
    features: new Set(),
    limits: {},
    requestDevice: () => {
      opened++;
      return Promise.reject(new Error("must not be called"));
    },
  } as unknown as GPUAdapter;
  await assert.rejects(() => webgpuDevice({ gpu: gpuOf(() => Promise.resolve(nullBackend)) }), (e) => {
    assertSaysWhatToDo(e);
    return /null backend/.test((e as Error).message);
  });
  await assert.rejects(() => webgpuDevice({ adapter: nullBackend }), DeviceError);
  assert.equal(opened, 0);
});
