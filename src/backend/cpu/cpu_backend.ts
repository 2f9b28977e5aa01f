/**
 * The CPU reference backend: plain loops, every sum accumulated in f64, results rounded once to the
 * storage dtype. It is the yardstick the WebGPU kernels are tested against, so it favours being
 * obviously right over being fast.
 * @module
 */
import type {
  Backend,
  BinaryOp,
  LoraBackwardArgs,
  LoraForwardArgs,
  LoraGrads,
  Storage,
  UnaryOp,
} from "../backend.ts";
import { type DType, dtypeSize, type HostArray, hostArray, roundInPlace } from "../../core/dtype.ts";
import { dropoutHash, dropoutKeepScale, dropoutThreshold } from "../../core/random.ts";
import { DeviceError } from "../../core/errors.ts";

/** CPU storage: a host array plus its dtype. */
export class CpuStorage implements Storage {
  constructor(public data: HostArray, readonly dtype: DType) {}
  get size(): number {
    return this.data.length;
  }
}

function arr(s: Storage): HostArray {
  const data = (s as CpuStorage).data;
  if (data === undefined) {
    throw new DeviceError(`cpu backend: storage was freed or belongs to another device`);
  }
  return data;
}

function make(dtype: DType, data: HostArray): CpuStorage {
  return new CpuStorage(roundInPlace(data, dtype), dtype);
}

const UNARY: Record<UnaryOp, (x: number) => number> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  silu: (x) => x / (1 + Math.exp(-x)),
  siluGrad: (x) => {
    const s = 1 / (1 + Math.exp(-x));
    return s * (1 + x * (1 - s));
  },
  relu: (x) => (x > 0 ? x : 0),
  step: (x) => (x > 0 ? 1 : 0),
  square: (x) => x * x,
  recip: (x) => 1 / x,
  abs: Math.abs,
  sin: Math.sin,
  cos: Math.cos,
};

const BINARY: Record<BinaryOp, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  max: (a, b) => (a >= b || Number.isNaN(a) ? a : b),
  gt: (a, b) => (a > b ? 1 : 0),
};

/** Strides of `shape` right-aligned into `rank` dims, 0 on broadcast axes. */
function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const rank = outShape.length;
  const strides = new Array<number>(rank).fill(0);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const o = rank - shape.length + i;
    strides[o] = shape[i] === 1 ? 0 : s;
    s *= shape[i];
  }
  return strides;
}

/** The dropout multiplier for element `i`. */
function maskAt(seed: number, i: number, threshold: number, keep: number): number {
  return dropoutHash(seed, i) >= threshold ? keep : 0;
}

/** Creates the CPU reference backend. */
export function createCpuBackend(): Backend {
  let liveBuffers = 0;
  let liveBytes = 0;
  const track = (s: CpuStorage): CpuStorage => {
    liveBuffers++;
    liveBytes += s.size * dtypeSize(s.dtype);
    return s;
  };
  const out = (dtype: DType, data: HostArray) => track(make(dtype, data));

  const backend: Backend = {
    kind: "cpu",
    description: "CPU reference",
    supportsDType: () => true,

    upload(data, dtype) {
      const a = hostArray(dtype, data.length);
      for (let i = 0; i < data.length; i++) a[i] = data[i];
      return out(dtype, a);
    },
    read(s) {
      return Promise.resolve(arr(s).slice());
    },
    readSync(s) {
      return arr(s).slice();
    },
    free(s) {
      const c = s as CpuStorage;
      if (c.data === undefined) return;
      liveBuffers--;
      liveBytes -= c.size * dtypeSize(c.dtype);
      (c as { data?: HostArray }).data = undefined;
    },
    memory: () => ({ buffers: liveBuffers, bytes: liveBytes }),

    fill(size, value, dtype) {
      return out(dtype, hostArray(dtype, size).fill(value));
    },
    cast(x, dtype) {
      const a = arr(x);
      const r = hostArray(dtype, a.length);
      for (let i = 0; i < a.length; i++) r[i] = a[i];
      return out(dtype, r);
    },
    unary(op, x) {
      const f = UNARY[op];
      const a = arr(x);
      const r = hostArray(x.dtype, a.length);
      for (let i = 0; i < a.length; i++) r[i] = f(a[i]);
      return out(x.dtype, r);
    },
    affine(x, mul, add) {
      const a = arr(x);
      const r = hostArray(x.dtype, a.length);
      // Adding a zero would turn −0 into +0, so copies (detach, reshape) and scales would not be exact.
      for (let i = 0; i < a.length; i++) r[i] = add === 0 ? a[i] * mul : a[i] * mul + add;
      return out(x.dtype, r);
    },
    binary(op, a, aShape, b, bShape, outShape) {
      const f = BINARY[op];
      const av = arr(a), bv = arr(b);
      const n = outShape.reduce((p, d) => p * d, 1);
      const r = hostArray(a.dtype, n);
      const rank = outShape.length;
      const as = broadcastStrides(aShape, outShape), bs = broadcastStrides(bShape, outShape);
      const idx = new Array<number>(rank).fill(0);
      let ai = 0, bi = 0;
      for (let i = 0; i < n; i++) {
        r[i] = f(av[ai], bv[bi]);
        // Odometer increment keeps the two source offsets in step with the output index.
        for (let d = rank - 1; d >= 0; d--) {
          idx[d]++;
          ai += as[d];
          bi += bs[d];
          if (idx[d] < outShape[d]) break;
          ai -= as[d] * idx[d];
          bi -= bs[d] * idx[d];
          idx[d] = 0;
        }
      }
      return out(a.dtype, r);
    },
    sumAxis(x, outer, n, inner) {
      const a = arr(x);
      const r = hostArray(x.dtype, outer * inner);
      for (let o = 0; o < outer; o++) {
        for (let j = 0; j < inner; j++) {
          let s = 0;
          for (let i = 0; i < n; i++) s += a[(o * n + i) * inner + j];
          r[o * inner + j] = s;
        }
      }
      return out(x.dtype, r);
    },
    maxAxis(x, outer, n, inner) {
      const a = arr(x);
      const r = hostArray(x.dtype, outer * inner);
      for (let o = 0; o < outer; o++) {
        for (let j = 0; j < inner; j++) {
          let s = -Infinity;
          for (let i = 0; i < n; i++) s = Math.max(s, a[(o * n + i) * inner + j]);
          r[o * inner + j] = s;
        }
      }
      return out(x.dtype, r);
    },
    softmax(x, rows, n, log) {
      const a = arr(x);
      const r = hostArray(x.dtype, rows * n);
      for (let i = 0; i < rows; i++) {
        let mx = -Infinity;
        for (let j = 0; j < n; j++) mx = Math.max(mx, a[i * n + j]);
        let s = 0;
        for (let j = 0; j < n; j++) s += Math.exp(a[i * n + j] - mx);
        const ls = Math.log(s);
        for (let j = 0; j < n; j++) {
          const z = a[i * n + j] - mx;
          r[i * n + j] = log ? z - ls : Math.exp(z) / s;
        }
      }
      return out(x.dtype, r);
    },
    matmul(a, b, { batch, aBatch, bBatch, m, k, n, transA, transB }) {
      const av = arr(a), bv = arr(b);
      const r = hostArray(a.dtype, batch * m * n);
      // Row i of op(A) is gathered once; then both layouts of B are walked contiguously: dot products
      // against B's rows when transposed, row-scaled accumulation (axpy) otherwise. Sums stay in f64.
      const row = new Float64Array(k);
      const acc = new Float64Array(n);
      for (let bt = 0; bt < batch; bt++) {
        const ao = aBatch === 1 ? 0 : bt * m * k, bo = bBatch === 1 ? 0 : bt * k * n;
        for (let i = 0; i < m; i++) {
          if (transA) { for (let p = 0; p < k; p++) row[p] = av[ao + p * m + i]; }
          else for (let p = 0; p < k; p++) row[p] = av[ao + i * k + p];
          const ro = bt * m * n + i * n;
          if (transB) {
            for (let j = 0; j < n; j++) {
              const jo = bo + j * k;
              let s = 0;
              for (let p = 0; p < k; p++) s += row[p] * bv[jo + p];
              r[ro + j] = s;
            }
          } else {
            acc.fill(0);
            for (let p = 0; p < k; p++) {
              const x = row[p], po = bo + p * n;
              for (let j = 0; j < n; j++) acc[j] += x * bv[po + j];
            }
            r.set(acc, ro);
          }
        }
      }
      return out(a.dtype, r);
    },
    permute(x, shape, perm) {
      const a = arr(x);
      const rank = shape.length;
      const inStrides = new Array<number>(rank);
      let s = 1;
      for (let i = rank - 1; i >= 0; i--) {
        inStrides[i] = s;
        s *= shape[i];
      }
      const outShape = perm.map((p) => shape[p]);
      const st = perm.map((p) => inStrides[p]);
      const r = hostArray(x.dtype, a.length);
      const idx = new Array<number>(rank).fill(0);
      let src = 0;
      for (let i = 0; i < a.length; i++) {
        r[i] = a[src];
        for (let d = rank - 1; d >= 0; d--) {
          idx[d]++;
          src += st[d];
          if (idx[d] < outShape[d]) break;
          src -= st[d] * idx[d];
          idx[d] = 0;
        }
      }
      return out(x.dtype, r);
    },
    gatherRows(table, ids, dim) {
      const t = arr(table);
      const r = hostArray(table.dtype, ids.length * dim);
      for (let i = 0; i < ids.length; i++) r.set(t.subarray(ids[i] * dim, ids[i] * dim + dim), i * dim);
      return out(table.dtype, r);
    },
    scatterAddRows(src, ids, rows, dim) {
      const s = arr(src);
      const acc = new Float64Array(rows * dim);
      for (let i = 0; i < ids.length; i++) {
        if (ids[i] < 0) continue;
        for (let j = 0; j < dim; j++) acc[ids[i] * dim + j] += s[i * dim + j];
      }
      const r = hostArray(src.dtype, rows * dim);
      r.set(acc);
      return out(src.dtype, r);
    },
    pick(x, idx, n) {
      const a = arr(x);
      const r = hostArray(x.dtype, idx.length);
      for (let i = 0; i < idx.length; i++) r[i] = idx[i] < 0 ? 0 : a[i * n + idx[i]];
      return out(x.dtype, r);
    },
    unpick(src, idx, n) {
      const s = arr(src);
      const r = hostArray(src.dtype, idx.length * n);
      for (let i = 0; i < idx.length; i++) if (idx[i] >= 0) r[i * n + idx[i]] = s[i];
      return out(src.dtype, r);
    },
    dropoutMask(size, p, seed, dtype) {
      const th = dropoutThreshold(p), keep = dropoutKeepScale(p);
      const r = hostArray(dtype, size);
      for (let i = 0; i < size; i++) r[i] = maskAt(seed, i, th, keep);
      return out(dtype, r);
    },
    loraForward(args) {
      return out(args.x.dtype, loraForwardRef(args));
    },
    loraBackward(args) {
      const g = loraBackwardRef(args);
      const dtype = args.x.dtype;
      return {
        dx: g.dx && out(dtype, g.dx),
        dA: out(dtype, g.dA),
        dB: out(dtype, g.dB),
      } as LoraGrads;
    },
    sync: () => Promise.resolve(),
    destroy() {},
  };
  return backend;
}

/** x after pre-dropout (or x itself), as f64. */
function droppedInput(args: LoraForwardArgs | LoraBackwardArgs): Float64Array {
  const x = arr(args.x);
  const xd = Float64Array.from(x);
  const d = args.dropout;
  if (d && d.position === "pre" && d.p > 0) {
    const th = dropoutThreshold(d.p), keep = dropoutKeepScale(d.p);
    for (let i = 0; i < xd.length; i++) xd[i] *= maskAt(d.seed, i, th, keep);
  }
  return xd;
}

/** t = drop_pre(x) A^T, [m, rank] in f64: the intermediate the fused path never stores. */
function loraInner(args: LoraForwardArgs | LoraBackwardArgs, xd: Float64Array): Float64Array {
  const { m, inFeatures: K, rank: R } = args;
  const A = arr(args.a);
  const t = new Float64Array(m * R);
  for (let i = 0; i < m; i++) {
    for (let r = 0; r < R; r++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += xd[i * K + k] * A[r * K + k];
      t[i * R + r] = s;
    }
  }
  return t;
}

/** Reference for the fused forward. */
function loraForwardRef(args: LoraForwardArgs): HostArray {
  const { m, inFeatures: K, outFeatures: N, rank: R, scale } = args;
  const x = arr(args.x), W = arr(args.w), B = arr(args.b);
  const bias = args.bias ? arr(args.bias) : null;
  const t = loraInner(args, droppedInput(args));
  const d = args.dropout;
  const post = d && d.position === "post" && d.p > 0;
  const th = post ? dropoutThreshold(d.p) : 0, keep = post ? dropoutKeepScale(d.p) : 1;
  const y = hostArray(args.x.dtype, m * N);
  for (let i = 0; i < m; i++) {
    for (let o = 0; o < N; o++) {
      let base = bias ? bias[o] : 0;
      for (let k = 0; k < K; k++) base += x[i * K + k] * W[o * K + k];
      let lora = 0;
      for (let r = 0; r < R; r++) lora += t[i * R + r] * B[o * R + r];
      lora *= scale;
      if (post) lora *= maskAt(d.seed, i * N + o, th, keep);
      y[i * N + o] = base + lora;
    }
  }
  return y;
}

/** Reference for the fused backward: dx = dy W + scale (dyl B) A (masked), dA, dB. */
function loraBackwardRef(args: LoraBackwardArgs): { dx: HostArray | null; dA: HostArray; dB: HostArray } {
  const { m, inFeatures: K, outFeatures: N, rank: R, scale } = args;
  const dy = arr(args.dy), W = arr(args.w), A = arr(args.a), B = arr(args.b);
  const d = args.dropout;
  const pre = d !== null && d.position === "pre" && d.p > 0;
  const post = d !== null && d.position === "post" && d.p > 0;
  const th = d ? dropoutThreshold(d.p) : 0, keep = d ? dropoutKeepScale(d.p) : 1;
  // Gradient reaching B(A(.)) before the scale: post-dropout masks it.
  const dyl = Float64Array.from(dy);
  if (post) { for (let i = 0; i < dyl.length; i++) dyl[i] *= maskAt(d!.seed, i, th, keep); }
  const xd = droppedInput(args);
  const t = loraInner(args, xd);
  const g = new Float64Array(m * R); // dyl B
  for (let i = 0; i < m; i++) {
    for (let r = 0; r < R; r++) {
      let s = 0;
      for (let o = 0; o < N; o++) s += dyl[i * N + o] * B[o * R + r];
      g[i * R + r] = s;
    }
  }
  const dtype = args.x.dtype;
  let dx: HostArray | null = null;
  if (args.needDx) {
    dx = hostArray(dtype, m * K);
    for (let i = 0; i < m; i++) {
      for (let k = 0; k < K; k++) {
        let base = 0;
        for (let o = 0; o < N; o++) base += dy[i * N + o] * W[o * K + k];
        let lora = 0;
        for (let r = 0; r < R; r++) lora += g[i * R + r] * A[r * K + k];
        lora *= scale;
        if (pre) lora *= maskAt(d!.seed, i * K + k, th, keep);
        dx[i * K + k] = base + lora;
      }
    }
  }
  const dA = hostArray(dtype, R * K);
  for (let r = 0; r < R; r++) {
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let i = 0; i < m; i++) s += g[i * R + r] * xd[i * K + k];
      dA[r * K + k] = scale * s;
    }
  }
  const dB = hostArray(dtype, N * R);
  for (let o = 0; o < N; o++) {
    for (let r = 0; r < R; r++) {
      let s = 0;
      for (let i = 0; i < m; i++) s += dyl[i * N + o] * t[i * R + r];
      dB[o * R + r] = scale * s;
    }
  }
  return { dx, dA, dB };
}
