/**
 * `linearCrossEntropy`: transformers' causal-LM loss, the mean cross-entropy of `hidden · weightᵀ` over
 * the non-ignored targets, without ever holding the whole [tokens, vocab] logits. The tokens are taken in
 * chunks: each chunk's logits are computed, reduced to its rows' losses (src/backend/kernels/
 * cross_entropy.ts) and freed before the next; the backward recomputes them chunk by chunk and turns
 * each into its share of d hidden and d weight. The forward keeps nothing beyond its inputs.
 * @module
 */
import { CROSS_ENTROPY_GRAD, CROSS_ENTROPY_ROWS, lossDType } from "../backend/kernels/cross_entropy.ts";
import type { Storage } from "../backend/backend.ts";
import { matmulArgs } from "../backend/shape.ts";
import { ConfigError, DTypeError, ShapeError } from "../core/errors.ts";
import { fromStorage, Tensor } from "./tensor.ts";
import { concat, deviceMismatch } from "./ops.ts";

/** Options of {@link linearCrossEntropy}. */
export interface LinearCrossEntropyOptions {
  /** Targets equal to this are skipped (default −100, as torch and transformers). */
  ignoreIndex?: number;
  /**
   * Most logits held at once, in elements (default 2²²: 16 MiB of f32); a chunk has
   * max(1, ⌊chunkElements / vocab⌋) tokens.
   */
  chunkElements?: number;
}

/** Default logits budget of one chunk (elements). */
export const DEFAULT_CHUNK_ELEMENTS = 1 << 22;

/**
 * Mean cross-entropy of the logits `hidden [N, H] · weight [V, H]ᵀ` against `targets` (N class ids,
 * `ignoreIndex` to skip), as a 0-d tensor in f32 (f64 for f64 operands; f16 logits are reduced in f32, as
 * transformers upcasts them). The logits are never whole: at most `chunkElements` of them exist at once,
 * in the forward and in the backward. Differentiable in `hidden` and `weight`. With no target left the
 * mean is NaN, as in torch.
 */
export function linearCrossEntropy(
  hidden: Tensor,
  weight: Tensor,
  targets: ArrayLike<number>,
  opts: LinearCrossEntropyOptions = {},
): Tensor {
  const op = "linearCrossEntropy";
  if (!(hidden instanceof Tensor)) {
    throw new ShapeError(`${op}: hidden must be a Tensor, got ${typeof hidden}`);
  }
  if (!(weight instanceof Tensor)) {
    throw new ShapeError(`${op}: weight must be a Tensor, got ${typeof weight}`);
  }
  if (hidden.ndim !== 2 || weight.ndim !== 2 || hidden.shape[1] !== weight.shape[1]) {
    throw new ShapeError(
      `${op}: hidden [${hidden.shape}] and weight [${weight.shape}] must be [N, H] and [V, H]`,
    );
  }
  if (weight.device !== hidden.device) throw deviceMismatch(op, [hidden.device, weight.device]);
  if (weight.dtype !== hidden.dtype) {
    throw new DTypeError(`${op}: hidden is ${hidden.dtype} and weight ${weight.dtype}; they must match`);
  }
  const [N, H] = hidden.shape;
  const V = weight.shape[0];
  if (targets.length !== N) {
    throw new ShapeError(`${op}: ${targets.length} targets for hidden [${hidden.shape}] (need ${N})`);
  }
  const ignoreIndex = opts.ignoreIndex ?? -100;
  const budget = opts.chunkElements ?? DEFAULT_CHUNK_ELEMENTS;
  if (!Number.isInteger(budget) || budget < 1) {
    throw new ConfigError(`${op}: chunkElements must be a positive whole number, got ${budget}`);
  }
  const idx = new Int32Array(N);
  let count = 0;
  for (let i = 0; i < N; i++) {
    const t = targets[i];
    if (t === ignoreIndex) {
      idx[i] = -1;
      continue;
    }
    if (!Number.isInteger(t) || t < 0 || t >= V) {
      throw new ShapeError(`${op}: target ${t} at row ${i} is out of range for ${V} classes`);
    }
    idx[i] = t;
    count++;
  }
  const device = hidden.device;
  device.checkAlive(op);
  const be = device.backend;
  const dtype = hidden.dtype, ldt = lossDType(dtype);
  const rowsPer = Math.max(1, Math.floor(budget / Math.max(V, 1)));
  // Chunks holding no target need no logits at all: skipping them is what makes a prompt-masked batch cheap.
  const chunks: { start: number; ids: Int32Array; targets: Int32Array }[] = [];
  for (let start = 0; start < N; start += rowsPer) {
    const end = Math.min(N, start + rowsPer);
    const t = idx.subarray(start, end);
    if (t.some((v) => v >= 0)) {
      chunks.push({ start, ids: Int32Array.from({ length: end - start }, (_, i) => start + i), targets: t });
    }
  }
  /** The logits of one chunk, [rows, V] (the caller frees them). */
  const logitsOf = (ids: Int32Array, h: Storage): Storage =>
    be.matmul(h, weight.storage(op), matmulArgs(ids.length, H, V, { transB: true }));
  const invCount = count === 0 ? NaN : 1 / count;

  let total: Storage = be.fill(1, 0, ldt);
  for (const c of chunks) {
    const h = be.gatherRows(hidden.storage(op), c.ids, H);
    const logits = logitsOf(c.ids, h);
    be.free(h);
    const [rows] = be.run(CROSS_ENTROPY_ROWS, [logits], { targets: c.targets, n: V, invCount });
    be.free(logits);
    const s = be.sumAxis(rows, 1, c.ids.length, 1);
    be.free(rows);
    const next = be.binary("add", total, [1], s, [1], [1]);
    be.free(total);
    be.free(s);
    total = next;
  }
  // Like torch, the mean over zero targets is NaN.
  const mean = count === 0 ? be.fill(1, NaN, ldt) : be.affine(total, invCount, 0);
  be.free(total);

  return fromStorage(mean, [], ldt, device, {
    op,
    inputs: [hidden, weight],
    backward: (g) => {
      const gs = g.storage(op);
      // d hidden in row order: each chunk's rows, zeros for the rows of chunks without a target.
      const dhParts: Tensor[] = [];
      let done = 0;
      const gap = (upTo: number) => {
        if (upTo > done) {
          dhParts.push(fromStorage(be.fill((upTo - done) * H, 0, dtype), [upTo - done, H], dtype, device));
        }
        done = upTo;
      };
      let dw: Storage | null = weight.requiresGrad ? be.fill(V * H, 0, dtype) : null;
      for (const c of chunks) {
        const n = c.ids.length;
        const h = be.gatherRows(hidden.storage(op), c.ids, H);
        const logits = logitsOf(c.ids, h);
        const [dl] = be.run(CROSS_ENTROPY_GRAD, [logits, gs], { targets: c.targets, n: V, invCount });
        be.free(logits);
        if (hidden.requiresGrad) {
          gap(c.start);
          dhParts.push(
            fromStorage(be.matmul(dl, weight.storage(op), matmulArgs(n, V, H)), [n, H], dtype, device),
          );
          done = c.start + n;
        }
        if (dw !== null) {
          const part = be.matmul(dl, h, matmulArgs(V, n, H, { transA: true }));
          const next = be.binary("add", dw, [V * H], part, [V * H], [V * H]);
          be.free(dw);
          be.free(part);
          dw = next;
        }
        be.free(dl);
        be.free(h);
      }
      let dh: Tensor | null = null;
      if (hidden.requiresGrad) {
        gap(N);
        dh = dhParts.length === 1 ? dhParts[0] : concat(dhParts, 0);
        if (dhParts.length > 1) { for (const t of dhParts) t.dispose(); }
      }
      return [
        dh,
        dw === null ? null : fromStorage(dw, weight.shape, dtype, device),
      ];
    },
  });
}
