/**
 * `dropoutMask`: 0 or 1 / (1 - p) per element, from `dropoutHash(seed, i)` (wgsl/dropout_mask.wgsl).
 * @module
 */
import type { DType } from "../../core/dtype.ts";
import { hostArray } from "../../core/dtype.ts";
import { dropoutHash, dropoutKeepScale, dropoutThreshold } from "../../core/random.ts";
import type { KernelRecord, ParamField } from "./record.ts";

/** The dropout fields every kernel with a dropout mask has in its uniform block. */
export const DROPOUT_PARAMS: readonly ParamField[] = [
  { name: "seed", type: "u32" },
  { name: "threshold", type: "u32" },
  { name: "keep", type: "f32" },
];

/** A dropout's uniform values (no dropout: keep everything, threshold 0 and factor 1). */
export function dropoutParams(d: { p: number; seed: number } | null): {
  seed: number;
  threshold: number;
  keep: number;
} {
  if (d === null) return { seed: 0, threshold: 0, keep: 1 };
  return { seed: d.seed >>> 0, threshold: dropoutThreshold(d.p), keep: dropoutKeepScale(d.p) };
}

/** The dropout multiplier of element `i` (the CPU twin of `dropout_factor` in wgsl/common.wgsl). */
export function dropoutFactor(seed: number, i: number, threshold: number, keep: number): number {
  return dropoutHash(seed, i) >= threshold ? keep : 0;
}

/** Arguments of {@link DROPOUT_MASK}. */
export interface DropoutMaskArgs {
  size: number;
  p: number;
  seed: number;
  dtype: DType;
}

/** The dropout-mask kernel: output y only. */
export const DROPOUT_MASK: KernelRecord<DropoutMaskArgs> = {
  name: "dropout_mask",
  template: "dropout_mask",
  bindings: [{ name: "y", access: "write" }],
  params: [{ name: "n", type: "u32" }, ...DROPOUT_PARAMS],
  outputs: (
    _,
    a,
  ) => [{ size: a.size, dtype: a.dtype, what: `dropoutMask: output of ${a.size} elements (${a.dtype})` }],
  specialise: (_, a) => ({ T: a.dtype }),
  uniforms: (a) => ({ n: a.size, ...dropoutParams(a) }),
  geometry: (a) => ({ elements: a.size }),
  reference: (_, a) => {
    const { seed, threshold, keep } = dropoutParams(a);
    const r = hostArray(a.dtype, a.size);
    for (let i = 0; i < a.size; i++) r[i] = dropoutFactor(seed, i, threshold, keep);
    return [r];
  },
};
