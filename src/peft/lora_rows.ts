/**
 * The fused mixed-batch LoRA of a layer whose batch rows use different adapters (PEFT's
 * `adapter_names`), on devices with a real kernel for it (WebGPU): the base GEMM once for the whole batch,
 * then one {@link LORA_ROWS} dispatch that gives every token its own row's adapter (SGMV-style shrink and
 * expand, adapters of any rank, rows without an adapter left at the base output). No loop over adapters.
 *
 * Forward only (no gradient recorded), the adapters are packed into two buffers cached per layer and
 * reused while the batch uses the same adapters with the same storage: a generation packs once and then
 * runs every step from the cache. An optimizer step gives the adapters' tensors new storage, which the
 * cache notices (it compares storages, not tensors); a hot swap writes into the same storage and says so
 * with {@link markRowsStale}.
 *
 * With a gradient to record, {@link rowRoutedLora} is one autograd op over x, the base output and every
 * adapter's A and B: the forward packs its own copy (never the cache, which a later forward may replace
 * before this backward runs) and keeps it for the backward, which is two dispatches whatever the number
 * of adapters:
 * {@link LORA_ROWS_BACK} per row (t = A x, u = Bᵀ dy and the LoRA part of dx) and {@link LORA_ROWS_GRAD}
 * per element of the packed dA and dB (each summing over its own adapter's rows only), then one copy out
 * per adapter weight. Each row's gradient reaches only its adapter; rows without one reach none.
 *
 * The composed path in lora_linear.ts stays the reference and runs everywhere else (CPU, adapters of
 * mixed dtypes); {@link rowRoutedLora} also runs on the CPU (the kernels' CPU twins) for tests.
 * @module
 */
import type { Storage } from "../backend/backend.ts";
import {
  LORA_ROWS,
  LORA_ROWS_BACK,
  LORA_ROWS_GRAD,
  LORA_ROWS_MAX_RANK,
  type LoraRowsGradSlot,
  type LoraRowsSlot,
  NO_SLOT,
} from "../backend/kernels/lora_rows.ts";
import type { DType } from "../core/dtype.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import type { Linear } from "../nn/layers.ts";
import type { RoutedLora } from "../nn/adapter_hook.ts";
import { fromStorage, isGradEnabled, type Tensor } from "../tensor/mod.ts";
import type { LoraAdapter } from "./lora_fields.ts";

/** Where each adapter of a batch sits in the packed A and B, and the forward's slot table. */
interface Layout {
  slots: LoraRowsSlot[];
  aOffsets: number[];
  bOffsets: number[];
  aTotal: number;
  bTotal: number;
}

/**
 * One layer's packed adapters: the storages they were made from (compared, not the adapter records:
 * PeftModel makes a fresh record of the active adapter on every routed forward), the slot table, and
 * whether a write into those storages (a hot swap) made the copy stale.
 */
interface Packed {
  storages: readonly Storage[];
  a: Tensor;
  b: Tensor;
  slots: LoraRowsSlot[];
  stale: boolean;
  /** The decoding step's view of this copy for one routing's rows ({@link routedDecodeParts}). */
  routed?: { rows: readonly (LoraAdapter | null)[]; adapters: readonly LoraAdapter[]; parts: RoutedLora };
}

const PACKED = new WeakMap<Linear, Packed>();

/** Elements rounded up to whole 4-byte words of `dtype` (packing copies whole words). */
const wordAligned = (n: number, dtype: DType) => (dtype === "f16" ? n + (n % 2) : n);

/** The packed layout of `adapters` in order (slot i = adapters[i]), each part word-aligned. */
function layoutOf(adapters: readonly LoraAdapter[], dtype: DType): Layout {
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
  return { slots, aOffsets, bOffsets, aTotal: Math.max(2, aEnd), bTotal: Math.max(2, bEnd) };
}

/** New packed copies of the adapters' A and B (both or neither: the first is freed if the second fails). */
function packAdapters(adapters: readonly LoraAdapter[], layout: Layout, op: string): [Storage, Storage] {
  const w = adapters[0].lora_A.weight;
  const be = w.device.backend, dtype = w.dtype;
  const a = be.pack(
    adapters.map((ad) => ad.lora_A.weight.storage(op)),
    layout.aOffsets,
    layout.aTotal,
    dtype,
  );
  try {
    return [
      a,
      be.pack(adapters.map((ad) => ad.lora_B.weight.storage(op)), layout.bOffsets, layout.bTotal, dtype),
    ];
  } catch (e) {
    be.free(a);
    throw e;
  }
}

/**
 * Whether {@link fusedRowRoutedForward} can run this forward: a device with the kernel, x in the base
 * weight's dtype, and every adapter present of one dtype and a rank the kernel takes. Gradients are
 * fine: a recorded forward becomes the differentiable {@link rowRoutedLora}.
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
  }
  return true;
}

/** The layer's packed adapters for `adapters`, from the cache when nothing changed, else packed anew. */
function packedFor(layer: Linear, adapters: readonly LoraAdapter[]): Packed {
  const storages = adapters.flatMap((
    a,
  ) => [a.lora_A.weight.storage("loraRows"), a.lora_B.weight.storage("loraRows")]);
  const scales = adapters.map((a) => a.scale);
  const hit = PACKED.get(layer);
  if (
    hit && !hit.stale && !hit.a.isDisposed && !hit.b.isDisposed && hit.storages.length === storages.length &&
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
  const layout = layoutOf(adapters, dtype);
  const [aStorage, bStorage] = packAdapters(adapters, layout, "loraRows");
  const a = fromStorage(aStorage, [layout.aTotal], dtype, device);
  const b = fromStorage(bStorage, [layout.bTotal], dtype, device);
  // The cache outlives any tidy scope the forward runs in.
  a._retained = true;
  b._retained = true;
  const packed = { storages, a, b, slots: layout.slots, stale: false };
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
 * Tells `layer`'s packed-adapter cache that adapter weights were written in place (same storages, new
 * values): the next mixed forward copies them again into new packed buffers. Frees and allocates
 * nothing now, so a hot swap leaves the device's memory as it was.
 */
export function markRowsStale(layer: Linear): void {
  const hit = PACKED.get(layer);
  if (hit) hit.stale = true;
}

/** The distinct adapters of `rows` in first-use order and each token's slot (rows of `chunk` tokens). */
function slotsOf(
  rows: readonly (LoraAdapter | null)[],
  chunk: number,
): { adapters: LoraAdapter[]; rowSlots: Uint32Array } {
  const adapters: LoraAdapter[] = [];
  const slotOf = new Map<LoraAdapter, number>();
  for (const a of rows) {
    if (a !== null && !slotOf.has(a)) {
      slotOf.set(a, adapters.length);
      adapters.push(a);
    }
  }
  const rowSlots = new Uint32Array(rows.length * chunk);
  rows.forEach((a, i) => rowSlots.fill(a === null ? NO_SLOT : slotOf.get(a)!, i * chunk, (i + 1) * chunk));
  return { adapters, rowSlots };
}

/**
 * What a decoding step needs to run `layer` with batch row i through `rows[i]` (null: the base output):
 * the layer's packed adapters, from the same cache the mixed-batch forward uses (a generation's prefill
 * packs, every step after it reads the copy), and each row's slot in them (src/nn/adapter_hook.ts
 * {@link RoutedLora}). The same object while the rows (the routing's own array) and the adapters'
 * storages stay the same, i.e. for a whole generation; a scale changed by a hot swap shows in its rows
 * (they are the cache's slots). Null when the kernel cannot take these adapters: none at all, dtypes
 * that differ among them or from the base weight, a rank past {@link LORA_ROWS_MAX_RANK}, or A and B
 * that do not fit the layer.
 */
export function routedDecodeParts(layer: Linear, rows: readonly (LoraAdapter | null)[]): RoutedLora | null {
  // Every step of a generation asks again: answer from the cache with no more than the storage checks
  // packedFor makes (the adapters were validated when the answer was made).
  const hit = PACKED.get(layer);
  if (hit?.routed?.rows === rows && !hit.stale && !hit.a.isDisposed && !hit.b.isDisposed) {
    const ads = hit.routed.adapters;
    let same = hit.storages.length === 2 * ads.length;
    for (let i = 0; same && i < ads.length; i++) {
      same = hit.storages[2 * i] === ads[i].lora_A.weight.storage("loraRows") &&
        hit.storages[2 * i + 1] === ads[i].lora_B.weight.storage("loraRows");
    }
    if (same) {
      ads.forEach((a, i) => hit.slots[i].scale = a.scale);
      return hit.routed.parts;
    }
  }
  const { adapters, rowSlots } = slotsOf(rows, 1);
  if (adapters.length === 0) return null;
  const dtype = layer.weight.dtype;
  for (const a of adapters) {
    const A = a.lora_A.weight, B = a.lora_B.weight;
    if (A.dtype !== dtype || B.dtype !== dtype || a.dim > LORA_ROWS_MAX_RANK) return null;
    if (
      A.shape.join() !== `${a.dim},${layer.inFeatures}` || B.shape.join() !== `${layer.outFeatures},${a.dim}`
    ) {
      return null;
    }
  }
  const packed = packedFor(layer, adapters);
  if (packed.routed?.rows === rows) return packed.routed.parts;
  const parts: RoutedLora = {
    a: packed.a,
    b: packed.b,
    rows: Array.from(rowSlots, (s) => (s === NO_SLOT ? null : packed.slots[s])),
  };
  packed.routed = { rows, adapters, parts };
  return parts;
}

/** Whether a forward over these tensors has a gradient to record. */
function recording(x: Tensor, base: Tensor, adapters: readonly LoraAdapter[]): boolean {
  return isGradEnabled() &&
    (x.requiresGrad || base.requiresGrad ||
      adapters.some((a) => a.lora_A.weight.requiresGrad || a.lora_B.weight.requiresGrad));
}

/**
 * `base` (the base layer's output for x, which this takes over) plus, on each token, its batch row's
 * adapter: `rows[i]` is batch row i's adapter or null, each batch row `chunk` tokens of x [.., in]. Call
 * only where {@link canFuseRows} says yes. With a gradient to record it is {@link rowRoutedLora}.
 */
export function fusedRowRoutedForward(
  layer: Linear,
  x: Tensor,
  base: Tensor,
  rows: readonly (LoraAdapter | null)[],
  chunk: number,
): Tensor {
  const { adapters, rowSlots } = slotsOf(rows, chunk);
  if (recording(x, base, adapters)) return rowRoutedLora(x, base, rows, chunk);
  const packed = packedFor(layer, adapters);
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

/**
 * The mixed-batch LoRA as one differentiable op on any device with the kernels (WebGPU, and the CPU
 * through their twins): y = base + scale_s · B_s A_s x per token, s its batch row's adapter (`rows[i]`
 * for batch row i of `chunk` tokens; null: y = base there). x [.., in] and base [.., out] share a dtype;
 * the adapters share one (which may be another). Gradients: dx gets Σ over the row's adapter only
 * (scale_s · A_sᵀ B_sᵀ dy; the base layer adds its own), base gets dy, and each adapter's A and B get
 * sums over their own rows only (scale · (B_sᵀ dy)ᵀ x and scale · dy (A_s x)ᵀ); `base` is disposed here
 * when nothing needs its gradient.
 * @throws {ShapeError} x and base do not split into `rows.length` rows of `chunk` tokens, or an adapter
 *   does not fit them
 * @throws {DTypeError} x and base differ in dtype, or the adapters do
 */
export function rowRoutedLora(
  x: Tensor,
  base: Tensor,
  rows: readonly (LoraAdapter | null)[],
  chunk: number,
): Tensor {
  const op = "LinearLoRA.forward";
  const k = x.shape[x.ndim - 1], n = base.shape[base.ndim - 1];
  const m = rows.length * chunk;
  if (x.size !== m * k || base.size !== m * n || x.size / k !== base.size / n) {
    throw new ShapeError(
      `${op}: input [${x.shape}] and base output [${base.shape}] do not split into ${rows.length} rows of ` +
        `${chunk} tokens`,
    );
  }
  if (x.dtype !== base.dtype) {
    throw new DTypeError(`${op}: x is ${x.dtype} but the base output ${base.dtype}`);
  }
  const { adapters, rowSlots } = slotsOf(rows, chunk);
  if (adapters.length === 0) return base;
  const dtype = adapters[0].lora_A.weight.dtype;
  for (const a of adapters) {
    const A = a.lora_A.weight, B = a.lora_B.weight;
    if (A.dtype !== dtype || B.dtype !== dtype) {
      throw new DTypeError(`${op}: the batch's adapters mix dtypes (${dtype} and ${A.dtype}/${B.dtype})`);
    }
    if (A.shape.join() !== `${a.dim},${k}` || B.shape.join() !== `${n},${a.dim}`) {
      throw new ShapeError(
        `${op}: an adapter's lora_A [${A.shape}] and lora_B [${B.shape}] do not fit x [.., ${k}] and the ` +
          `base output [.., ${n}] (rank ${a.dim})`,
      );
    }
  }
  const be = x.device.backend;
  const layout = layoutOf(adapters, dtype);
  const weights = adapters.flatMap((a) => [a.lora_A.weight, a.lora_B.weight]);
  const [pa, pb] = packAdapters(adapters, layout, op);
  let y: Storage;
  try {
    [y] = be.run(LORA_ROWS, [x.storage(op), base.storage(op), pa, pb], {
      m,
      k,
      n,
      rowSlots,
      slots: layout.slots,
    });
  } catch (e) {
    be.free(pa);
    be.free(pb);
    throw e;
  }
  // The backward reads the same packed copy (the weights cannot change in between without a new forward:
  // an optimizer step gives them new storages, a hot swap is a write after this op's reads). Held as
  // tensors, so a graph that is never backpropagated, or a tidy scope that ends first, frees them; the
  // backward then packs again.
  const held = [
    fromStorage(pa, [layout.aTotal], dtype, x.device),
    fromStorage(pb, [layout.bTotal], dtype, x.device),
  ];
  const keepBase = base.requiresGrad && isGradEnabled();
  const inputs = keepBase ? [x, base, ...weights] : [x, ...weights];
  const out = fromStorage(y, base.shape, base.dtype, base.device, {
    op: "loraRows",
    inputs,
    backward: (g) => {
      const needW = weights.some((w) => w.requiresGrad);
      const wGrads: (Tensor | null)[] = weights.map(() => null);
      let dx: Tensor | null = null;
      if (x.requiresGrad || needW) {
        const fresh = held.some((t) => t.isDisposed);
        const [pa, pb] = fresh
          ? packAdapters(adapters, layout, op)
          : [held[0].storage(op), held[1].storage(op)];
        const temps: Storage[] = fresh ? [pa, pb] : [];
        try {
          const [t, u, dxs] = be.run(LORA_ROWS_BACK, [x.storage(op), g.storage(op), pa, pb], {
            m,
            k,
            n,
            rowSlots,
            slots: layout.slots,
            needDx: x.requiresGrad,
          });
          temps.push(t, u);
          if (x.requiresGrad) dx = fromStorage(dxs, x.shape, x.dtype, x.device);
          else temps.push(dxs);
          if (needW) {
            const { order, gradSlots } = rowOrder(rowSlots, layout.slots);
            const [da, db] = be.run(LORA_ROWS_GRAD, [x.storage(op), g.storage(op), t, u], {
              m,
              k,
              n,
              aSize: layout.aTotal,
              bSize: layout.bTotal,
              order,
              slots: gradSlots,
              dtype: dtype as "f32" | "f16",
            });
            temps.push(da, db);
            const want = weights.map((w, i) => (w.requiresGrad ? i : -1)).filter((i) => i >= 0);
            const fromA = want.filter((i) => i % 2 === 0), fromB = want.filter((i) => i % 2 === 1);
            const outA = be.unpack(
              da,
              fromA.map((i) => layout.aOffsets[i >> 1]),
              fromA.map((i) => weights[i].size),
            );
            const outB = be.unpack(
              db,
              fromB.map((i) => layout.bOffsets[i >> 1]),
              fromB.map((i) => weights[i].size),
            );
            fromA.forEach((i, j) => wGrads[i] = fromStorage(outA[j], weights[i].shape, dtype, x.device));
            fromB.forEach((i, j) => wGrads[i] = fromStorage(outB[j], weights[i].shape, dtype, x.device));
          }
        } finally {
          for (const s of temps) be.free(s);
        }
      }
      // Queued work keeps its buffers until it is submitted, so freeing after queueing is safe.
      for (const t of held) t.dispose();
      return keepBase ? [dx, g, ...wGrads] : [dx, ...wGrads];
    },
  });
  if (!keepBase) base.dispose();
  return out;
}

/** The batch's rows with an adapter grouped by slot, and each slot's run of them. */
function rowOrder(
  rowSlots: Uint32Array,
  slots: readonly LoraRowsSlot[],
): { order: Uint32Array; gradSlots: LoraRowsGradSlot[] } {
  const counts = new Array<number>(slots.length).fill(0);
  for (const s of rowSlots) if (s !== NO_SLOT) counts[s]++;
  const starts: number[] = [];
  let total = 0;
  for (const c of counts) {
    starts.push(total);
    total += c;
  }
  const order = new Uint32Array(total);
  const next = [...starts];
  rowSlots.forEach((s, r) => {
    if (s !== NO_SLOT) order[next[s]++] = r;
  });
  return { order, gradSlots: slots.map((s, i) => ({ ...s, rowStart: starts[i], rowCount: counts[i] })) };
}
