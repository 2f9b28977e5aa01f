/**
 * `linearCrossEntropy`: transformers' causal-LM loss, the mean cross-entropy of `hidden · weightᵀ` over
 * the non-ignored targets, without ever holding the whole [tokens, vocab] logits, nor even one token's
 * whole row of them. The logits are computed in tiles of R tokens × C classes (under a budget of
 * elements, with shapes the GEMMs like: up to 1024 rows, thousands of columns): the vocabulary chunks
 * run outermost, each folded into every row's running log-sum-exp (an online softmax, src/backend/
 * kernels/cross_entropy.ts), so the weight rows of one chunk are copied out once per pass. The forward
 * keeps one log-sum-exp per row; the backward recomputes each tile, turns it into its gradient from that
 * log-sum-exp and adds its share of d hidden and d weight.
 * @module
 */
import {
  CROSS_ENTROPY_FINISH,
  CROSS_ENTROPY_GRAD,
  CROSS_ENTROPY_ONLINE,
  lossDType,
  TARGET_ELSEWHERE,
  TARGET_IGNORED,
} from "../backend/kernels/cross_entropy.ts";
import type { Backend, Storage } from "../backend/backend.ts";
import { matmulArgs } from "../backend/shape.ts";
import { ConfigError, DTypeError, ShapeError } from "../core/errors.ts";
import { fromStorage, Tensor } from "./tensor.ts";
import { concat, deviceMismatch } from "./ops.ts";

/** Options of {@link linearCrossEntropy}. */
export interface LinearCrossEntropyOptions {
  /** Targets equal to this are skipped (default −100, as torch and transformers). */
  ignoreIndex?: number;
  /**
   * Most logits held at once, in elements (default 2²³: 32 MiB of f32). A tile is R tokens × C classes
   * with R · C at most this (1 × 1 at least): C = the whole vocabulary when it fits beside
   * min(tokens, 1024) rows, else as many classes as fit beside them but at least min(vocab, 4096), and R
   * as many rows as fit beside C.
   */
  chunkElements?: number;
  /** Classes per tile, overriding the choice above (R then follows from chunkElements). */
  vocabChunk?: number;
}

/** Default logits budget of one tile (elements). */
export const DEFAULT_CHUNK_ELEMENTS = 1 << 23;

/** Rows a tile aims at: enough for the GEMMs to run at full speed, few enough to leave room for columns. */
const TARGET_ROWS = 1024;

/** Fewest classes a tile takes when the vocabulary is split (GEMM shapes degrade below it). */
const MIN_VOCAB_CHUNK = 4096;

/** The tile shape (rows, classes) for N tokens over V classes under `budget` elements. */
export function lossTile(N: number, V: number, budget: number, vocabChunk?: number): [number, number] {
  let C: number;
  if (vocabChunk !== undefined) C = Math.min(V, vocabChunk);
  else {
    const rows = Math.max(1, Math.min(N, TARGET_ROWS));
    C = Math.min(V, Math.max(Math.floor(budget / rows), Math.min(V, MIN_VOCAB_CHUNK)));
  }
  C = Math.max(1, C);
  const R = Math.max(1, Math.min(N, Math.floor(budget / C)));
  return [R, C];
}

/**
 * The storages one pass of the loss (its forward, or its backward) makes: freed as the pass goes, and
 * whatever is left freed when the pass throws (an op refusing a tile under the device's memory limit
 * halfway through a large vocabulary), so a failed pass leaks nothing.
 */
class Scratch {
  readonly #live = new Set<Storage>();
  constructor(private readonly be: Backend) {}
  /** `s`, now owned by the pass. */
  take(s: Storage): Storage {
    this.#live.add(s);
    return s;
  }
  /** Frees `s` if the pass owns it (not the operands' own storages). */
  free(s: Storage): void {
    if (this.#live.delete(s)) this.be.free(s);
  }
  /** `s`, no longer the pass's: handed to a tensor that outlives it. */
  keep(s: Storage): Storage {
    this.#live.delete(s);
    return s;
  }
  /** Frees every storage still owned (after a failure). */
  freeAll(): void {
    for (const s of this.#live) this.be.free(s);
    this.#live.clear();
  }
}

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
  if (opts.vocabChunk !== undefined && !(Number.isInteger(opts.vocabChunk) && opts.vocabChunk >= 1)) {
    throw new ConfigError(`${op}: vocabChunk must be a positive whole number, got ${opts.vocabChunk}`);
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
  // Where the device splits tensors larger than one buffer (a tied head too large to bind), a tile,
  // its hidden rows and its weight rows each stay within one buffer.
  const perBuffer = (rowLength: number) => be.maxRowsPerBuffer?.(rowLength, dtype) ?? Infinity;
  let [R, C] = lossTile(N, V, Math.min(budget, perBuffer(1)), opts.vocabChunk);
  C = Math.max(1, Math.min(C, perBuffer(H)));
  R = Math.max(1, Math.min(R, perBuffer(H), Math.floor(perBuffer(1) / C)));
  // Chunks of f16 rows start on whole 4-byte words (copies move words): with an odd H, an even count of
  // rows per chunk.
  const even = (x: number, all: number) =>
    dtype === "f16" && H % 2 === 1 && x < all ? Math.max(2, x - (x % 2)) : x;
  C = even(C, V);
  R = even(R, N);
  // Token chunks holding no target need no logits at all: skipping them is what makes a prompt-masked
  // batch cheap.
  const rowChunks: { start: number; n: number; targets: Int32Array }[] = [];
  for (let start = 0; start < N; start += R) {
    const t = idx.subarray(start, Math.min(N, start + R));
    if (t.some((v) => v >= 0)) rowChunks.push({ start, n: t.length, targets: t });
  }
  const vocabChunks: { c0: number; n: number }[] = [];
  for (let c0 = 0; c0 < V; c0 += C) vocabChunks.push({ c0, n: Math.min(C, V - c0) });
  /** Each row's target code inside vocabulary chunk `v`. */
  const codes = (rows: Int32Array, v: { c0: number; n: number }): Int32Array =>
    rows.map((t) => t < 0 ? TARGET_IGNORED : t >= v.c0 && t < v.c0 + v.n ? t - v.c0 : TARGET_ELSEWHERE);
  const whole = (r: { start: number; n: number }) => r.start === 0 && r.n === N;
  /** The hidden rows of a token chunk (the tensor's own storage when it is all of them). */
  const rowsOf = (x: Scratch, r: { start: number; n: number }): Storage =>
    whole(r) ? hidden.storage(op) : x.take(be.unpack(hidden.storage(op), [r.start * H], [r.n * H])[0]);
  /** The weight rows of a vocabulary chunk (the tensor's own storage when it is all of them). */
  const classesOf = (x: Scratch, v: { c0: number; n: number }): Storage =>
    v.n === V ? weight.storage(op) : x.take(be.unpack(weight.storage(op), [v.c0 * H], [v.n * H])[0]);
  const logitsOf = (x: Scratch, h: Storage, rows: number, w: Storage, classes: number): Storage =>
    x.take(be.matmul(h, w, matmulArgs(rows, H, classes, { transB: true })));
  const invCount = count === 0 ? NaN : 1 / count;

  const fwd = new Scratch(be);
  const lse: Tensor[] = [];
  let mean: Storage;
  try {
    const state: (Storage | null)[] = rowChunks.map(() => null);
    for (const v of vocabChunks) {
      const w = classesOf(fwd, v);
      rowChunks.forEach((r, i) => {
        const h = rowsOf(fwd, r);
        const logits = logitsOf(fwd, h, r.n, w, v.n);
        fwd.free(h);
        const prev = state[i];
        const [next] = be.run(CROSS_ENTROPY_ONLINE, [logits, prev ?? logits], {
          targets: codes(r.targets, v),
          n: v.n,
          first: prev === null,
        });
        fwd.take(next);
        fwd.free(logits);
        if (prev !== null) fwd.free(prev);
        state[i] = next;
      });
      fwd.free(w);
    }
    let total: Storage = fwd.take(be.fill(1, 0, ldt));
    rowChunks.forEach((r, i) => {
      const [rows, l] = be.run(CROSS_ENTROPY_FINISH, [state[i]!], { ignored: r.targets });
      fwd.take(rows);
      lse.push(fromStorage(l, [r.n], ldt, device));
      fwd.free(state[i]!);
      const sum = fwd.take(be.sumAxis(rows, 1, r.n, 1));
      fwd.free(rows);
      const next = fwd.take(be.binary("add", total, [1], sum, [1], [1]));
      fwd.free(total);
      fwd.free(sum);
      total = next;
    });
    // Like torch, the mean over zero targets is NaN.
    mean = count === 0 ? be.fill(1, NaN, ldt) : be.affine(total, invCount, 0);
    fwd.free(total);
  } catch (e) {
    fwd.freeAll();
    for (const l of lse) l.dispose();
    throw e;
  }

  // The log-sum-exps live as long as the loss's graph: constant inputs of its node (no gradient flows to
  // them), so graph disposal and tidy scopes free them like any op's saved tensors.
  const loss = fromStorage(mean, [], ldt, device, {
    op,
    inputs: [hidden, weight, ...lse],
    backward: (g) => {
      const gs = g.storage(op);
      const bwd = new Scratch(be);
      const made: Tensor[] = [];
      try {
        const dh: (Storage | null)[] = rowChunks.map(() => null);
        const dwParts: Storage[] = [];
        const add = (acc: Storage | null, part: Storage, size: number): Storage => {
          if (acc === null) return part;
          const sum = bwd.take(be.binary("add", acc, [size], part, [size], [size]));
          bwd.free(acc);
          bwd.free(part);
          return sum;
        };
        for (const v of vocabChunks) {
          const w = classesOf(bwd, v);
          let dw: Storage | null = null;
          rowChunks.forEach((r, i) => {
            const h = rowsOf(bwd, r);
            const logits = logitsOf(bwd, h, r.n, w, v.n);
            const [dl] = be.run(CROSS_ENTROPY_GRAD, [logits, lse[i].storage(op), gs], {
              targets: codes(r.targets, v),
              n: v.n,
              invCount,
            });
            bwd.take(dl);
            bwd.free(logits);
            if (hidden.requiresGrad) {
              dh[i] = add(dh[i], bwd.take(be.matmul(dl, w, matmulArgs(r.n, v.n, H))), r.n * H);
            }
            if (weight.requiresGrad) {
              const part = bwd.take(be.matmul(dl, h, matmulArgs(v.n, r.n, H, { transA: true })));
              dw = add(dw, part, v.n * H);
            }
            bwd.free(dl);
            bwd.free(h);
          });
          bwd.free(w);
          if (weight.requiresGrad) dwParts.push(dw ?? bwd.take(be.fill(v.n * H, 0, dtype)));
        }
        /** A tensor over a storage of the pass (disposed with the others if the pass fails later). */
        const tensorOf = (st: Storage, shape: readonly number[]): Tensor => {
          const t = fromStorage(bwd.keep(st), shape, dtype, device);
          made.push(t);
          return t;
        };
        let dhTensor: Tensor | null = null;
        if (hidden.requiresGrad) {
          // d hidden in row order: each chunk's rows, zeros for the rows of chunks without a target.
          const parts: Tensor[] = [];
          let done = 0;
          rowChunks.forEach((r, i) => {
            if (r.start > done) {
              parts.push(tensorOf(bwd.take(be.fill((r.start - done) * H, 0, dtype)), [r.start - done, H]));
            }
            parts.push(tensorOf(dh[i]!, [r.n, H]));
            done = r.start + r.n;
          });
          if (N > done) parts.push(tensorOf(bwd.take(be.fill((N - done) * H, 0, dtype)), [N - done, H]));
          if (parts.length === 1) dhTensor = parts[0];
          else {
            dhTensor = concat(parts, 0);
            made.push(dhTensor);
            for (const t of parts) t.dispose();
          }
        }
        let dwTensor: Tensor | null = null;
        if (weight.requiresGrad) {
          const offsets = vocabChunks.map((v) => v.c0 * H);
          if (dwParts.length === 1) dwTensor = tensorOf(dwParts[0], weight.shape);
          else if (dtype === "f16" && offsets.some((o) => o % 2 === 1)) {
            // Packing moves whole 4-byte words: odd f16 offsets take the concatenation instead.
            const parts = dwParts.map((p, i) => tensorOf(p, [vocabChunks[i].n, H]));
            dwTensor = concat(parts, 0);
            made.push(dwTensor);
            for (const t of parts) t.dispose();
          } else {
            // Rows of H: a weight gradient too large for one buffer is split like the weight.
            dwTensor = tensorOf(bwd.take(be.pack(dwParts, offsets, V * H, dtype, H)), weight.shape);
            for (const p of dwParts) bwd.free(p);
          }
        }
        return [dhTensor, dwTensor, ...lse.map(() => null)];
      } catch (e) {
        bwd.freeAll();
        for (const t of made) t.dispose();
        throw e;
      }
    },
  });
  if (!loss.requiresGrad) { for (const l of lse) l.dispose(); }
  return loss;
}
