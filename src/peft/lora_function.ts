/**
 * The fused LoRA linear as one autograd op (NeMo AutoModel's `LoRATritonFunction`, widened to include the base
 * GEMM and dropout): y = x Wᵀ + b + scale · drop(B(A(x))). Kept for backward: x, A and B (W and b are
 * frozen parameters, alive anyway) and the token×rank intermediate t = drop_pre(x) Aᵀ (m·rank f32 values,
 * tiny next to x), so that dB = scale · drop_post(dy)ᵀ t needs no second product over x.
 *
 * Mixed precision: lora_A and lora_B may have a dtype of their own (f32 adapters over an f16 base). The
 * output and dx are in the base dtype, dA and dB in the adapters', every product accumulated in f32.
 * @module
 */
import type { FusedDropout, Storage } from "../backend/backend.ts";
import { deviceMismatch, fromStorage, type Tensor } from "../tensor/mod.ts";
import { keepLoraInner } from "../nn/lora_inner.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";

/**
 * Fused LoRA linear on any device. x [..., in] (3-D inputs are flattened to 2-D internally), weight
 * [out, in], bias [out] or null, loraA [rank, in], loraB [out, rank]. x, weight and bias share one dtype;
 * loraA and loraB share one, which may be another (mixed precision).
 */
export function loraLinear(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  loraA: Tensor,
  loraB: Tensor,
  scale: number,
  dropout: FusedDropout | null = null,
): Tensor {
  const op = "loraLinear";
  const [outF, inF] = weight.shape;
  const rank = loraA.shape[0];
  if (weight.ndim !== 2 || x.ndim < 1 || x.shape[x.ndim - 1] !== inF) {
    throw new ShapeError(`${op}: input [${x.shape}] does not end in in_features of weight [${weight.shape}]`);
  }
  if (
    loraA.ndim !== 2 || loraA.shape[1] !== inF || loraB.ndim !== 2 || loraB.shape[0] !== outF ||
    loraB.shape[1] !== rank
  ) {
    throw new ShapeError(
      `${op}: lora_A [${loraA.shape}] and lora_B [${loraB.shape}] do not fit weight [${weight.shape}] ` +
        `(need [rank, ${inF}] and [${outF}, rank])`,
    );
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== outF)) {
    throw new ShapeError(`${op}: bias [${bias.shape}] does not match out_features ${outF}`);
  }
  const operands = bias ? [x, weight, bias, loraA, loraB] : [x, weight, loraA, loraB];
  for (const t of operands) {
    if (t.device !== x.device) {
      throw deviceMismatch(op, operands.map((o) => o.device));
    }
    const [want, what] = t === loraA || t === loraB ? [loraA.dtype, "lora_A's"] : [x.dtype, "x's"];
    if (t.dtype !== want) {
      throw new DTypeError(`${op}: operands have different dtypes (${t.dtype} vs ${what} ${want})`);
    }
  }
  x.device.checkAlive(op);
  const be = x.device.backend;
  const m = x.size / inF;
  const drop = dropout && dropout.p > 0 ? dropout : null;
  const common = { m, inFeatures: inF, outFeatures: outF, rank, scale, dropout: drop };
  // t is kept only when this call records a backward (nn/lora_inner.ts); otherwise the forward computes
  // it into scratch it frees at once.
  const saved = keepLoraInner(x, loraA, common, operands, op);
  let y: Storage;
  try {
    y = be.loraForward({
      x: x.storage(op),
      w: weight.storage(op),
      bias: bias ? bias.storage(op) : null,
      a: loraA.storage(op),
      b: loraB.storage(op),
      inner: saved?.storage(op) ?? null,
      ...common,
    });
  } catch (e) {
    // A forward refused (a memory limit, say) leaves nothing behind, t included.
    saved?.dispose();
    throw e;
  }
  return fromStorage(y, [...x.shape.slice(0, -1), outF], x.dtype, x.device, {
    op,
    inputs: operands,
    backward: (g) => {
      const grads = be.loraBackward({
        dy: g.storage(op),
        x: x.storage(op),
        w: weight.storage(op),
        a: loraA.storage(op),
        b: loraB.storage(op),
        needDx: x.requiresGrad,
        inner: saved === null || saved.isDisposed ? null : saved.storage(op),
        ...common,
      });
      // The graph's one backward has read t. A second backward (the graph kept and run again), or one
      // after a tidy scope freed t with the rest of the forward, recomputes it instead.
      saved?.dispose();
      const wrap = (s: typeof grads.dA | null, like: Tensor) =>
        s === null ? null : fromStorage(s, like.shape, like.dtype, x.device);
      const dx = wrap(grads.dx, x);
      const dA = loraA.requiresGrad ? wrap(grads.dA, loraA) : (be.free(grads.dA), null);
      const dB = loraB.requiresGrad ? wrap(grads.dB, loraB) : (be.free(grads.dB), null);
      // Unfrozen base weights are unusual for LoRA; their gradients come from the plain linear op.
      let dW: Tensor | null = null, db: Tensor | null = null;
      if (weight.requiresGrad) {
        const args = { batch: 1, aBatch: 1, bBatch: 1, m: outF, k: m, n: inF, transA: true, transB: false };
        dW = fromStorage(be.matmul(g.storage(op), x.storage(op), args), weight.shape, x.dtype, x.device);
      }
      if (bias?.requiresGrad) {
        db = fromStorage(be.sumAxis(g.storage(op), 1, m, outF), bias.shape, x.dtype, x.device);
      }
      return bias ? [dx, dW, db, dA, dB] : [dx, dW, dA, dB];
    },
  });
}
