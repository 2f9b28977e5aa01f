/**
 * The fused LoRA linear's kept intermediate, shared by its two autograd ops (src/peft/lora_function.ts and
 * src/nn/quantized_linear.ts): t = drop_pre(x)·Aᵀ, made once by the forward and read again by the backward's
 * dB, instead of a second product over x.
 * @module
 */
import type { LoraInnerArgs } from "../backend/backend.ts";
import { fromStorage, isGradEnabled, type Tensor } from "../tensor/mod.ts";

/**
 * t = drop_pre(x)·Aᵀ [m, rank], as a tensor of the backend's accumulation dtype, when this call records a
 * backward (grad mode on and one of `operands` requiring grad: fromStorage's rule), else null. A tensor, so
 * that tidy scopes and the collector free it with the rest of a graph dropped without a backward; the
 * backward disposes of it once it ran.
 */
export function keepLoraInner(
  x: Tensor,
  loraA: Tensor,
  sizes: Omit<LoraInnerArgs, "x" | "a">,
  operands: readonly Tensor[],
  op: string,
): Tensor | null {
  if (!isGradEnabled() || !operands.some((o) => o.requiresGrad)) return null;
  const inner = x.device.backend.loraInner({ x: x.storage(op), a: loraA.storage(op), ...sizes });
  return fromStorage(inner, [sizes.m, sizes.rank], inner.dtype, x.device);
}
