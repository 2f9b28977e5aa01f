/**
 * Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_: every gradient is scaled by
 * min(1, maxNorm / (total + 1e-6)). It stays on the device (no read-back, so no wait per step): the total
 * norm comes back as a 0-d tensor to read whenever convenient.
 * @module
 */
import { add, div, maximum, mul, neg, noGrad, sqrt, square, sum, type Tensor, tidy } from "../tensor/mod.ts";
import { ConfigError } from "../core/errors.ts";

/**
 * Scales the gradients of `params` in place so their joint L2 norm is at most `maxNorm`; returns the
 * norm before clipping as a 0-d tensor (null when no parameter has a gradient). Parameters without a
 * gradient are skipped.
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): Tensor | null {
  if (typeof maxNorm !== "number" || !(maxNorm > 0)) {
    throw new ConfigError(`clipGradNorm: maxNorm must be a positive number, got ${maxNorm}`);
  }
  const withGrad = [...params].filter((p) => p.grad !== null);
  if (withGrad.length === 0) return null;
  // Gradients change in place (same tensor objects, as torch's clip_grad_norm_); temporaries are freed.
  return tidy(() =>
    noGrad(() => {
      let sq: Tensor | null = null;
      for (const p of withGrad) {
        const s = sum(square(p.grad!));
        sq = sq === null ? s : add(sq, s);
      }
      const total = sqrt(sq!);
      // min(1, maxNorm / (total + 1e-6)) without a min op: −max(−x, −1).
      const coef = neg(maximum(neg(div(maxNorm, add(total, 1e-6))), -1));
      for (const p of withGrad) p.grad!._assign(mul(p.grad!, coef));
      return total;
    })
  );
}
