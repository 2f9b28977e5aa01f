/**
 * The fused mixed-batch forward of a LoRA layer whose batch rows use different adapters (PEFT's
 * `adapter_names`), on devices with a real kernel for it (WebGPU): the base GEMM once for the whole batch,
 * then one {@link LORA_ROWS} dispatch that gives every token its own row's adapter (SGMV-style shrink and
 * expand, adapters of any rank, rows without an adapter left at the base output). No loop over adapters.
 *
 * The kernel reads the adapters' A and B from two packed buffers. Packing is a copy of every adapter the
 * batch uses, so it is cached per layer and reused while the batch uses the same adapters with the same
 * storage: a generation packs once and then runs every step from the cache. A hot swap gives the
 * adapter's tensors new storage, which the cache notices (it compares storages, not tensors) and repacks.
 * The composed path in lora_linear.ts stays the reference and runs everywhere else (CPU, gradients,
 * adapters of mixed dtypes).
 * @module
 */
import type { Storage } from "../backend/backend.ts";
import { LORA_ROWS, LORA_ROWS_MAX_RANK, type LoraRowsSlot, NO_SLOT } from "../backend/kernels/lora_rows.ts";
import type { DType } from "../core/dtype.ts";
import type { Linear } from "../nn/layers.ts";
import { fromStorage, isGradEnabled, type Tensor } from "../tensor/mod.ts";
import type { LoraAdapter } from "./lora_fields.ts";

/**
 * One layer's packed adapters: the storages they were made from (compared, not the adapter records:
 * PeftModel makes a fresh record of the active adapter on every routed forward) and the slot table.
 */
interface Packed {
  storages: readonly Storage[];
  a: Tensor;
  b: Tensor;
  slots: LoraRowsSlot[];
}

const PACKED = new WeakMap<Linear, Packed>();

/** Elements rounded up to whole 4-byte words of `dtype` (packing copies whole words). */
const wordAligned = (n: number, dtype: DType) => (dtype === "f16" ? n + (n % 2) : n);

/**
 * Whether {@link fusedRowRoutedForward} can run this forward: a device with the kernel, no gradient to
 * record, x in the base weight's dtype, and every adapter present of one dtype and a rank the kernel takes.
 */
export function canFuseRows(layer: Linear, x: Tensor, adapters: readonly LoraAdapter[]): boolean {
  if (x.device.kind !== "webgpu" || x.dtype !== layer.weight.dtype) {
    return false;
  }
  if (adapters.length === 0) return false;
  const dtype = adapters[0].lora_A.weight.dtype;
  for (const a of adapters) {
    const A = a.lora_A.weight, B = a.lora_B.weight;
    if (A.dtype !== dtype || B.dtype !== dtype || a.dim > LORA_ROWS_MAX_RANK) return false;
    if (isGradEnabled() && (A.requiresGrad || B.requiresGrad)) return false;
  }
  return !(isGradEnabled() && (x.requiresGrad || layer.weight.requiresGrad || layer.bias?.requiresGrad));
}

/** The layer's packed adapters for `adapters`, from the cache when nothing changed, else packed anew. */
function packedFor(layer: Linear, adapters: readonly LoraAdapter[]): Packed {
  const storages = adapters.flatMap((
    a,
  ) => [a.lora_A.weight.storage("loraRows"), a.lora_B.weight.storage("loraRows")]);
  const scales = adapters.map((a) => a.scale);
  const hit = PACKED.get(layer);
  if (
    hit && !hit.a.isDisposed && !hit.b.isDisposed && hit.storages.length === storages.length &&
    hit.storages.every((s, i) => s === storages[i])
  ) {
    // Scales live on the host: a changed one (a hot swap with another alpha) needs no repacking.
    hit.slots.forEach((s, i) => s.scale = scales[i]);
    return hit;
  }
  if (hit) {
    hit.a.dispose();
    hit.b.dispose();
    PACKED.delete(layer);
  }
  const device = adapters[0].lora_A.weight.device, dtype = adapters[0].lora_A.weight.dtype;
  const slots: LoraRowsSlot[] = [];
  const aOffsets: number[] = [], bOffsets: number[] = [];
  let aEnd = 0, bEnd = 0;
  for (const ad of adapters) {
    slots.push({ rank: ad.dim, aOffset: aEnd, bOffset: bEnd, scale: ad.scale });
    aOffsets.push(aEnd);
    bOffsets.push(bEnd);
    aEnd += wordAligned(ad.lora_A.weight.size, dtype);
    bEnd += wordAligned(ad.lora_B.weight.size, dtype);
  }
  const be = device.backend;
  const aStorage = be.pack(storages.filter((_, i) => i % 2 === 0), aOffsets, Math.max(2, aEnd), dtype);
  let bStorage: Storage;
  try {
    bStorage = be.pack(storages.filter((_, i) => i % 2 === 1), bOffsets, Math.max(2, bEnd), dtype);
  } catch (e) {
    be.free(aStorage);
    throw e;
  }
  const a = fromStorage(aStorage, [Math.max(2, aEnd)], dtype, device);
  const b = fromStorage(bStorage, [Math.max(2, bEnd)], dtype, device);
  // The cache outlives any tidy scope the forward runs in.
  a._retained = true;
  b._retained = true;
  const packed = { storages, a, b, slots };
  PACKED.set(layer, packed);
  return packed;
}

/** Frees `layer`'s packed adapters, if any (the next mixed forward packs again). */
export function releasePackedRows(layer: Linear): void {
  const hit = PACKED.get(layer);
  if (!hit) return;
  hit.a.dispose();
  hit.b.dispose();
  PACKED.delete(layer);
}

/**
 * `base` (the base layer's output for x, which this takes over) plus, on each token, its batch row's
 * adapter: `rows[i]` is batch row i's adapter or null, each batch row `chunk` tokens of x [.., in]. Call
 * only where {@link canFuseRows} says yes.
 */
export function fusedRowRoutedForward(
  layer: Linear,
  x: Tensor,
  base: Tensor,
  rows: readonly (LoraAdapter | null)[],
  chunk: number,
): Tensor {
  const adapters: LoraAdapter[] = [];
  const slotOf = new Map<LoraAdapter, number>();
  for (const a of rows) {
    if (a !== null && !slotOf.has(a)) {
      slotOf.set(a, adapters.length);
      adapters.push(a);
    }
  }
  const packed = packedFor(layer, adapters);
  const rowSlots = new Uint32Array(rows.length * chunk);
  rows.forEach((a, i) => rowSlots.fill(a === null ? NO_SLOT : slotOf.get(a)!, i * chunk, (i + 1) * chunk));
  const op = "LinearLoRA.forward";
  const [y] = x.device.backend.run(
    LORA_ROWS,
    [x.storage(op), base.storage(op), packed.a.storage(op), packed.b.storage(op)],
    { m: rowSlots.length, k: layer.inFeatures, n: layer.outFeatures, rowSlots, slots: packed.slots },
  );
  const out = fromStorage(y, base.shape, base.dtype, base.device);
  base.dispose();
  return out;
}
