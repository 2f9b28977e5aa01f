/** Lowering the binding limit the library sees, for tests of tensors split across buffers. */
import type { Device } from "../../../mod.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";

/** Runs `fn` with the adapter's binding limit, as the library sees it, lowered to `bytes`. */
export async function withBindingLimit<T>(dev: Device, bytes: number, fn: () => Promise<T>): Promise<T> {
  const limits = (dev.backend as WebGpuBackend).rt.limits;
  const saved = limits.maxStorageBufferBindingSize;
  limits.maxStorageBufferBindingSize = bytes;
  try {
    return await fn();
  } finally {
    limits.maxStorageBufferBindingSize = saved;
  }
}
