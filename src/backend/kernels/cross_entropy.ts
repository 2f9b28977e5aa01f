/**
 * The kernels of the fused linear + cross-entropy loss (src/tensor/fused_loss.ts), which never holds a
 * row's whole logits: the loss computes logits one [rows, n] chunk at a time (n classes of the
 * vocabulary, starting at some class c0), and
 * - {@link CROSS_ENTROPY_ONLINE} folds each vocabulary chunk into every row's running maximum, sum of
 *   exponentials and target logit (an online log-sum-exp; wgsl/cross_entropy/online.wgsl);
 * - {@link CROSS_ENTROPY_FINISH} turns that state into the row's loss lse − x[target] and its
 *   log-sum-exp, which the backward keeps (wgsl/cross_entropy/finish.wgsl);
 * - {@link CROSS_ENTROPY_GRAD} gives a chunk's gradient (exp(x − lse) − onehot) · g · invCount from the
 *   kept log-sum-exp, element by element (wgsl/cross_entropy/grad.wgsl).
 * Targets are given per chunk as the column inside it: {@link TARGET_ELSEWHERE} when the target is in
 * another chunk, {@link TARGET_IGNORED} on an ignored row.
 * @module
 */
import type { DType } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import { ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD } from "./record.ts";

/** A chunk's target code: the target class lies in another vocabulary chunk. */
export const TARGET_ELSEWHERE = -1;
/** A chunk's target code: the row is ignored (no loss, no gradient). */
export const TARGET_IGNORED = -2;

/** The dtype losses, their running state and gradient seed are kept in: f32 for f16 and f32 logits. */
export function lossDType(dtype: DType): DType {
  return dtype === "f64" ? "f64" : "f32";
}

/** Arguments of {@link CROSS_ENTROPY_ONLINE}. */
export interface CrossEntropyOnlineArgs {
  /** Per row: the target's column in this chunk, or a negative code. */
  targets: Int32Array;
  /** Classes of the chunk (its row width). */
  n: number;
  /** The first chunk of the vocabulary: no earlier state (the `prev` input is not read). */
  first: boolean;
}

function checkChunk(op: string, x: { size: number }, targets: Int32Array, n: number): void {
  expectSize(x.size, targets.length * n, op, `logits [${targets.length}, ${n}]`);
  for (let i = 0; i < targets.length; i++) {
    if (targets[i] >= n || targets[i] < TARGET_IGNORED) {
      throw new ShapeError(`${op}: target code ${targets[i]} at row ${i} is out of range for ${n} classes`);
    }
  }
}

/**
 * The online log-sum-exp step: inputs the logits chunk and the previous state [rows · 3] (m, s, t per
 * row; any storage when `first`), scratch the target codes, output the new state.
 */
export const CROSS_ENTROPY_ONLINE: KernelRecord<CrossEntropyOnlineArgs> = {
  name: "cross_entropy_online",
  template: "cross_entropy/online",
  includes: ["cross_entropy/reduce"],
  bindings: [
    { name: "x", access: "read" },
    { name: "prev", access: "read" },
    { name: "targets", access: "read" },
    { name: "next", access: "write" },
  ],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, NEG_INF_FIELD],
  check([x, prev], a) {
    checkChunk("linearCrossEntropy", x, a.targets, a.n);
    if (!a.first) expectSize(prev.size, 3 * a.targets.length, "linearCrossEntropy", "the running state");
  },
  outputs: ([x], a) => [{
    size: 3 * a.targets.length,
    dtype: lossDType(x.dtype),
    what: `linearCrossEntropy: running log-sum-exp of ${a.targets.length} rows`,
  }],
  specialise: ([x], a) => ({ T: x.dtype, L: lossDType(x.dtype), FIRST: a.first }),
  uniforms: (a) => ({ rows: a.targets.length, n: a.n, neg_inf: -Infinity }),
  scratch: (a) => [a.targets],
  geometry: (a) => ({ rows: a.targets.length }),
  reference([x, prev], { targets, n, first }, [out]) {
    const r = hostArray(out.dtype, 3 * targets.length);
    for (let i = 0; i < targets.length; i++) {
      let m = -Infinity;
      for (let j = 0; j < n; j++) m = Math.max(m, x[i * n + j]);
      let s = 0;
      for (let j = 0; j < n; j++) s += Math.exp(x[i * n + j] - m);
      const t = targets[i] >= 0 ? x[i * n + targets[i]] : 0;
      if (first) {
        r.set([m, s, t], 3 * i);
        continue;
      }
      const [pm, ps, pt] = [prev[3 * i], prev[3 * i + 1], prev[3 * i + 2]];
      const nm = Math.max(pm, m);
      const ns = (ps > 0 ? ps * Math.exp(pm - nm) : 0) + (s > 0 ? s * Math.exp(m - nm) : 0);
      r.set([nm, ns, targets[i] >= 0 ? t : pt], 3 * i);
    }
    return [r];
  },
};

/** Arguments of {@link CROSS_ENTROPY_FINISH}. */
export interface CrossEntropyFinishArgs {
  /** Per row: negative for an ignored row. */
  ignored: Int32Array;
}

/** The rows' results: input the state [rows · 3], scratch the ignored flags, outputs loss [rows], lse [rows]. */
export const CROSS_ENTROPY_FINISH: KernelRecord<CrossEntropyFinishArgs> = {
  name: "cross_entropy_finish",
  template: "cross_entropy/finish",
  bindings: [
    { name: "state", access: "read" },
    { name: "ignored", access: "read" },
    { name: "loss", access: "write" },
    { name: "lse", access: "write" },
  ],
  params: [{ name: "rows", type: "u32" }],
  check: ([s], a) => expectSize(s.size, 3 * a.ignored.length, "linearCrossEntropy", "the running state"),
  outputs: ([s], a) => [
    { size: a.ignored.length, dtype: s.dtype, what: `linearCrossEntropy: row losses [${a.ignored.length}]` },
    { size: a.ignored.length, dtype: s.dtype, what: `linearCrossEntropy: log-sum-exp [${a.ignored.length}]` },
  ],
  specialise: ([s]) => ({ L: s.dtype }),
  uniforms: (a) => ({ rows: a.ignored.length }),
  scratch: (a) => [a.ignored],
  geometry: (a) => ({ elements: a.ignored.length }),
  reference([s], { ignored }, [lossSpec]) {
    const loss = hostArray(lossSpec.dtype, ignored.length), lse = hostArray(lossSpec.dtype, ignored.length);
    for (let i = 0; i < ignored.length; i++) {
      lse[i] = s[3 * i] + Math.log(s[3 * i + 1]);
      loss[i] = ignored[i] < 0 ? 0 : lse[i] - s[3 * i + 2];
    }
    return [loss, lse];
  },
};

/** Arguments of {@link CROSS_ENTROPY_GRAD}. */
export interface CrossEntropyGradArgs {
  /** Per row: the target's column in this chunk, or a negative code. */
  targets: Int32Array;
  /** Classes of the chunk. */
  n: number;
  /** The multiplier besides g (1 / non-ignored rows of the whole loss). */
  invCount: number;
}

/** A chunk's gradient: inputs logits, the rows' lse and g (one element), scratch targets, output d logits. */
export const CROSS_ENTROPY_GRAD: KernelRecord<CrossEntropyGradArgs> = {
  name: "cross_entropy_grad",
  template: "cross_entropy/grad",
  bindings: [
    { name: "x", access: "read" },
    { name: "lse", access: "read" },
    { name: "g", access: "read" },
    { name: "targets", access: "read" },
    { name: "dx", access: "write" },
  ],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, { name: "inv_count", type: "f32" }],
  check([x, lse, g], a) {
    checkChunk("linearCrossEntropy backward", x, a.targets, a.n);
    expectSize(lse.size, a.targets.length, "linearCrossEntropy backward", "the log-sum-exp");
    expectSize(g.size, 1, "linearCrossEntropy backward", "the loss gradient");
  },
  outputs: ([x], a) => [{
    size: a.targets.length * a.n,
    dtype: x.dtype,
    what: `linearCrossEntropy backward: logits gradient [${a.targets.length}, ${a.n}] (${x.dtype})`,
  }],
  specialise: ([x]) => ({ T: x.dtype, L: lossDType(x.dtype) }),
  uniforms: (a) => ({ rows: a.targets.length, n: a.n, inv_count: a.invCount }),
  scratch: (a) => [a.targets],
  geometry: (a) => ({ elements: a.targets.length * a.n }),
  reference([x, lse, g], { targets, n, invCount }, [out]) {
    const r = hostArray(out.dtype, targets.length * n);
    const f = g[0] * invCount;
    for (let i = 0; i < targets.length; i++) {
      if (targets[i] === TARGET_IGNORED) continue;
      for (let j = 0; j < n; j++) {
        r[i * n + j] = (Math.exp(x[i * n + j] - lse[i]) - (j === targets[i] ? 1 : 0)) * f;
      }
    }
    return [r];
  },
};
