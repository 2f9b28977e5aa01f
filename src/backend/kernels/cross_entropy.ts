/**
 * The two kernels of the fused linear + cross-entropy loss (src/tensor/fused_loss.ts), each over one
 * chunk of logits [rows, n] that the loss computes, uses and frees before the next chunk: the rows'
 * losses log Σ exp(x) − x[target] (wgsl/cross_entropy/rows.wgsl), and the chunk's gradient
 * (softmax − onehot) · g · invCount (wgsl/cross_entropy/grad.wgsl). Negative targets are ignored rows.
 * @module
 */
import type { DType } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import { ShapeError } from "../../core/errors.ts";
import { expectSize, type KernelRecord, NEG_INF_FIELD } from "./record.ts";

/** Arguments of {@link CROSS_ENTROPY_ROWS} and {@link CROSS_ENTROPY_GRAD}. */
export interface CrossEntropyArgs {
  /** Target class per row; negative = ignored. */
  targets: Int32Array;
  /** Classes (the chunk's row width). */
  n: number;
  /** The gradient's multiplier besides g (1 / non-ignored rows of the whole loss); unused by the rows. */
  invCount: number;
}

/** The dtype losses and their gradient seed are kept in: f32 for f16 and f32 logits (as transformers). */
export function lossDType(dtype: DType): DType {
  return dtype === "f64" ? "f64" : "f32";
}

function checkTargets(op: string, x: { size: number }, { targets, n }: CrossEntropyArgs): void {
  expectSize(x.size, targets.length * n, op, `logits [${targets.length}, ${n}]`);
  for (let i = 0; i < targets.length; i++) {
    if (targets[i] >= n) {
      throw new ShapeError(`${op}: target ${targets[i]} at row ${i} is out of range for ${n} classes`);
    }
  }
}

/** Log-sum-exp and maximum of row i, in f64. */
function rowStats(x: ArrayLike<number>, i: number, n: number): { m: number; s: number } {
  let m = -Infinity;
  for (let j = 0; j < n; j++) m = Math.max(m, x[i * n + j]);
  let s = 0;
  for (let j = 0; j < n; j++) s += Math.exp(x[i * n + j] - m);
  return { m, s };
}

/** Per-row cross-entropy: input logits, scratch targets, output loss [rows] (0 on ignored rows). */
export const CROSS_ENTROPY_ROWS: KernelRecord<CrossEntropyArgs> = {
  name: "cross_entropy_rows",
  template: "cross_entropy/rows",
  includes: ["cross_entropy/reduce"],
  bindings: [
    { name: "x", access: "read" },
    { name: "targets", access: "read" },
    { name: "loss", access: "write" },
  ],
  params: [{ name: "rows", type: "u32" }, { name: "n", type: "u32" }, NEG_INF_FIELD],
  check: ([x], a) => checkTargets("linearCrossEntropy", x, a),
  outputs: ([x], a) => [{
    size: a.targets.length,
    dtype: lossDType(x.dtype),
    what: `linearCrossEntropy: row losses [${a.targets.length}]`,
  }],
  specialise: ([x]) => ({ T: x.dtype, L: lossDType(x.dtype) }),
  uniforms: (a) => ({ rows: a.targets.length, n: a.n, neg_inf: -Infinity }),
  scratch: (a) => [a.targets],
  geometry: (a) => ({ rows: a.n === 0 ? 0 : a.targets.length }),
  reference([x], { targets, n }, [out]) {
    const r = hostArray(out.dtype, targets.length);
    for (let i = 0; i < targets.length; i++) {
      if (targets[i] < 0) continue;
      const { m, s } = rowStats(x, i, n);
      r[i] = m + Math.log(s) - x[i * n + targets[i]];
    }
    return [r];
  },
};

/** The chunk's gradient: inputs logits and g (one element), scratch targets, output d logits. */
export const CROSS_ENTROPY_GRAD: KernelRecord<CrossEntropyArgs> = {
  name: "cross_entropy_grad",
  template: "cross_entropy/grad",
  includes: ["cross_entropy/reduce"],
  bindings: [
    { name: "x", access: "read" },
    { name: "g", access: "read" },
    { name: "targets", access: "read" },
    { name: "dx", access: "write" },
  ],
  params: [
    { name: "rows", type: "u32" },
    { name: "n", type: "u32" },
    { name: "inv_count", type: "f32" },
    NEG_INF_FIELD,
  ],
  check([x, g], a) {
    checkTargets("linearCrossEntropy backward", x, a);
    expectSize(g.size, 1, "linearCrossEntropy backward", "the loss gradient");
  },
  outputs: ([x], a) => [{
    size: a.targets.length * a.n,
    dtype: x.dtype,
    what: `linearCrossEntropy backward: logits gradient [${a.targets.length}, ${a.n}] (${x.dtype})`,
  }],
  specialise: ([x]) => ({ T: x.dtype, L: lossDType(x.dtype) }),
  uniforms: (a) => ({ rows: a.targets.length, n: a.n, inv_count: a.invCount, neg_inf: -Infinity }),
  scratch: (a) => [a.targets],
  geometry: (a) => ({ rows: a.n === 0 ? 0 : a.targets.length }),
  reference([x, g], { targets, n, invCount }, [out]) {
    const r = hostArray(out.dtype, targets.length * n);
    const f = g[0] * invCount;
    for (let i = 0; i < targets.length; i++) {
      if (targets[i] < 0) continue;
      const { m, s } = rowStats(x, i, n);
      for (let j = 0; j < n; j++) {
        r[i * n + j] = (Math.exp(x[i * n + j] - m) / s - (j === targets[i] ? 1 : 0)) * f;
      }
    }
    return [r];
  },
};
