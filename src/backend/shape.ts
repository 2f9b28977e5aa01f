/**
 * Index arithmetic both backends share: broadcast strides, contiguous strides, merging contiguous axes,
 * and the one constructor of matrix-product arguments. Pure functions of shapes, no device code.
 * @module
 */

/** Row-major strides of a contiguous array of `shape`. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** Product of the extents (1 for rank 0). */
export function shapeElements(shape: readonly number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

/** Strides of `shape` right-aligned into `outShape`'s rank, 0 along broadcast axes. */
export function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const strides = new Array<number>(outShape.length).fill(0);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[outShape.length - shape.length + i] = shape[i] === 1 ? 0 : s;
    s *= shape[i];
  }
  return strides;
}

/**
 * Drops extent-1 axes and merges neighbours that every stride list walks contiguously, so that typical
 * shapes reach the GPU kernels with rank 1 or 2. Returns at least one axis.
 */
export function collapseAxes(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): { shape: number[]; strides: number[][] } {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, j) => outStrides[j][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, j) => (outStrides[j][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strides.forEach((s, j) => outStrides[j].push(s[d]));
    }
  }
  if (outShape.length === 0) return { shape: [1], strides: strides.map(() => [0]) };
  return { shape: outShape, strides: outStrides };
}

/**
 * Arguments of {@link Backend.matmul}: out[b] = op(A[b]) · op(B[b]), op = transpose when the flag is set.
 * A[b] is [m, k] ([k, m] stored when transA); B[b] is [k, n] ([n, k] stored when transB); `aBatch` and
 * `bBatch` are 1 (broadcast) or `batch`.
 */
export interface MatmulArgs {
  batch: number;
  aBatch: number;
  bBatch: number;
  m: number;
  k: number;
  n: number;
  transA: boolean;
  transB: boolean;
}

/**
 * The arguments of one product op(A) [m, k] · op(B) [k, n]; unbatched and untransposed unless `opts`
 * says otherwise (the one place the defaults live).
 */
export function matmulArgs(
  m: number,
  k: number,
  n: number,
  opts: Partial<Omit<MatmulArgs, "m" | "k" | "n">> = {},
): MatmulArgs {
  const batch = opts.batch ?? 1;
  return {
    batch,
    aBatch: opts.aBatch ?? batch,
    bBatch: opts.bBatch ?? batch,
    m,
    k,
    n,
    transA: opts.transA ?? false,
    transB: opts.transB ?? false,
  };
}
