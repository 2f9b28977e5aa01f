/**
 * The ops of a quantized frozen base weight (QLoRA's frozen NF4 or int8 base): packing a weight on its
 * device, dequantizing it, and the linear y = x dequant(W)ᵀ + b (+ a fused LoRA term) whose GEMMs read the
 * packed words and dequantize on load (wgsl/gemm/operands.wgsl's QUANT_B). The layout and rounding rules
 * are in src/backend/kernels/quantize.ts. The base is frozen: the backward gives the input's gradient (and
 * the LoRA weights'), never the weight's.
 * @module
 */
import type { FusedDropout, Storage } from "../backend/backend.ts";
import {
  DEQUANTIZE,
  QUANT_PACK,
  QUANT_SCALES,
  type QuantLayout,
  quantLayout,
} from "../backend/kernels/quantize.ts";
import { deviceMismatch, fromStorage, type Tensor } from "../tensor/mod.ts";
import { keepLoraInner } from "./lora_inner.ts";
import type { DType } from "../core/dtype.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";

export type { QuantLayout, QuantScheme } from "../backend/kernels/quantize.ts";

/**
 * Packs a 2-D weight [out, in] on its own device (kernels queued, no readback): NF4 in blocks of
 * `blockSize` over the row-major flattening, or int8 with one scale per row. Returns the packed words as a
 * frozen f32 tensor [words] and their layout; `weight` is left as it was.
 */
export function packWeight(
  weight: Tensor,
  scheme: "nf4" | "int8",
  blockSize: number,
): { packed: Tensor; layout: QuantLayout } {
  const op = "quantize";
  if (weight.ndim !== 2) throw new ShapeError(`${op}: weight must be 2-D [out, in], got [${weight.shape}]`);
  if (weight.dtype === "f64") throw new DTypeError(`${op}: weights are quantized from f32 or f16, got f64`);
  const layout = quantLayout(scheme, weight.size, scheme === "int8" ? weight.shape[1] : blockSize);
  weight.device.checkAlive(op);
  const be = weight.device.backend;
  const w = weight.storage(op);
  const [scales] = be.run(QUANT_SCALES, [w], { layout });
  let packed: Storage;
  try {
    [packed] = be.run(QUANT_PACK, [w, scales], { layout });
  } finally {
    be.free(scales);
  }
  return { packed: fromStorage(packed, [layout.words], "f32", weight.device), layout };
}

/** The dequantized weight of `packed` as a new tensor of `shape` and `dtype` (every value one f32 product). */
export function dequantizePacked(
  packed: Tensor,
  layout: QuantLayout,
  shape: readonly number[],
  dtype: DType = "f32",
): Tensor {
  const op = "dequantizedWeight";
  packed.device.checkDType(dtype, op);
  const [w] = packed.device.backend.run(DEQUANTIZE, [packed.storage(op)], { layout, dtype });
  return fromStorage(w, shape, dtype, packed.device);
}

/** The LoRA term fused into a quantized linear: lora_A [r, in], lora_B [out, r], scale and dropout. */
export interface FusedLora {
  a: Tensor;
  b: Tensor;
  scale: number;
  dropout: FusedDropout | null;
}

/**
 * y = x dequant(W)ᵀ + b (+ scale · drop(x Aᵀ Bᵀ)) for a packed frozen weight [out, in]; x [..., in]. x, bias
 * and the LoRA weights share one dtype (f32 or f16); the packed words are f32 whatever it is. Differentiable
 * in x, bias and the LoRA weights; the weight is frozen by construction.
 */
export function quantizedLinear(
  x: Tensor,
  packed: Tensor,
  layout: QuantLayout,
  outFeatures: number,
  inFeatures: number,
  bias: Tensor | null,
  lora: FusedLora | null = null,
): Tensor {
  const op = "quantizedLinear";
  if (x.ndim < 1 || x.shape[x.ndim - 1] !== inFeatures) {
    throw new ShapeError(`${op}: input [${x.shape}] does not end in in_features ${inFeatures}`);
  }
  if (layout.size !== outFeatures * inFeatures || packed.size !== layout.words) {
    throw new ShapeError(
      `${op}: packed weight of ${packed.size} words does not fit [${outFeatures}, ${inFeatures}]`,
    );
  }
  const rank = lora ? lora.a.shape[0] : 0;
  if (
    lora && (lora.a.ndim !== 2 || lora.a.shape[1] !== inFeatures || lora.b.ndim !== 2 ||
      lora.b.shape[0] !== outFeatures || lora.b.shape[1] !== rank)
  ) {
    throw new ShapeError(
      `${op}: lora_A [${lora.a.shape}] and lora_B [${lora.b.shape}] do not fit [${outFeatures}, ${inFeatures}]`,
    );
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== outFeatures)) {
    throw new ShapeError(`${op}: bias [${bias.shape}] does not match out_features ${outFeatures}`);
  }
  const same = [x, ...(bias ? [bias] : []), ...(lora ? [lora.a, lora.b] : [])];
  for (const t of [...same, packed]) {
    if (t.device !== x.device) throw deviceMismatch(op, [...same, packed].map((o) => o.device));
  }
  for (const t of same) {
    if (t.dtype !== x.dtype) {
      throw new DTypeError(`${op}: operands have different dtypes (${t.dtype} vs ${x.dtype})`);
    }
  }
  if (x.dtype === "f64") throw new DTypeError(`${op}: quantized weights compute in f32 or f16, got f64`);
  x.device.checkAlive(op);
  const be = x.device.backend;
  const m = x.size / inFeatures;
  const drop = lora?.dropout && lora.dropout.p > 0 ? lora.dropout : null;
  // Without an adapter the fused op runs at rank 0: empty A and B (made per call and freed after it), no
  // LoRA term.
  const withAdapter = <R>(fn: (a: Storage, b: Storage) => R): R => {
    if (lora) return fn(lora.a.storage(op), lora.b.storage(op));
    const ea = be.fill(0, 0, x.dtype), eb = be.fill(0, 0, x.dtype);
    try {
      return fn(ea, eb);
    } finally {
      be.free(ea);
      be.free(eb);
    }
  };
  const common = {
    m,
    inFeatures,
    outFeatures,
    rank,
    scale: lora?.scale ?? 0,
    dropout: drop,
    wQuant: layout,
  };
  const w = packed.storage(op);
  // With an adapter, t = drop_pre(x) Aᵀ is kept for the backward when this call records one (lora_inner.ts).
  const saved = lora ? keepLoraInner(x, lora.a, common, same, op) : null;
  let y: Storage;
  try {
    y = withAdapter((a, b) =>
      be.loraForward({
        x: x.storage(op),
        w,
        bias: bias ? bias.storage(op) : null,
        a,
        b,
        inner: saved?.storage(op) ?? null,
        ...common,
      })
    );
  } catch (e) {
    saved?.dispose();
    throw e;
  }
  return fromStorage(y, [...x.shape.slice(0, -1), outFeatures], x.dtype, x.device, {
    op,
    inputs: same,
    backward: (g) => {
      const grads = withAdapter((a, b) =>
        be.loraBackward({
          dy: g.storage(op),
          x: x.storage(op),
          w: packed.storage(op),
          a,
          b,
          needDx: x.requiresGrad,
          // Null after a first backward (or a tidy scope) freed it: recomputed then.
          inner: saved === null || saved.isDisposed ? null : saved.storage(op),
          ...common,
        })
      );
      saved?.dispose();
      const wrap = (s: Storage | null, shape: readonly number[]) =>
        s === null ? null : fromStorage(s, shape, x.dtype, x.device);
      const dx = wrap(grads.dx, x.shape);
      const dA = lora?.a.requiresGrad ? wrap(grads.dA, lora.a.shape) : (be.free(grads.dA), null);
      const dB = lora?.b.requiresGrad ? wrap(grads.dB, lora.b.shape) : (be.free(grads.dB), null);
      const db = bias?.requiresGrad
        ? fromStorage(be.sumAxis(g.storage(op), 1, m, outFeatures), bias.shape, x.dtype, x.device)
        : null;
      return [dx, ...(bias ? [db] : []), ...(lora ? [dA, dB] : [])];
    },
  });
}
