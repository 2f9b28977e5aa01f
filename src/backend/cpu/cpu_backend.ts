/**
 * The CPU reference backend: plain loops, every sum accumulated in f64, results rounded once to the
 * storage dtype. It is the yardstick the WebGPU kernels are tested against, so it favours being
 * obviously right over being fast.
 * @module
 */
import type {
  Backend,
  LoraBackwardArgs,
  LoraForwardArgs,
  LoraGrads,
  LoraInnerArgs,
  ProfileRow,
  Storage,
} from "../backend.ts";
import { type DType, dtypeSize, type HostArray, hostArray, roundInPlace } from "../../core/dtype.ts";
import { dropoutKeepScale, dropoutThreshold } from "../../core/random.ts";
import { DeviceError, DTypeError, ShapeError } from "../../core/errors.ts";
import type { KernelRecord } from "../kernels/record.ts";
import { checkPack, checkSegments } from "../packing.ts";
import { AFFINE } from "../kernels/affine.ts";
import { BINARY } from "../kernels/binary.ts";
import { CAST } from "../kernels/cast.ts";
import { DROPOUT_MASK, dropoutFactor } from "../kernels/dropout_mask.ts";
import { FILL } from "../kernels/fill.ts";
import { GATHER_ROWS } from "../kernels/gather_rows.ts";
import { PERMUTE } from "../kernels/permute.ts";
import { PICK, UNPICK } from "../kernels/pick.ts";
import { REDUCE_COLS } from "../kernels/reduce_axis.ts";
import { SCATTER_ADD_ROWS } from "../kernels/scatter_add_rows.ts";
import { SOFTMAX } from "../kernels/softmax.ts";
import { UNARY } from "../kernels/unary.ts";
import { dequantizeValues } from "../kernels/quantize.ts";

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

/** The CPU device's default memory limit when the runtime does not say how much memory there is. */
const FALLBACK_LIMIT_BYTES = 4 * 2 ** 30;

/**
 * The CPU device's default memory limit: half the machine's physical memory where the runtime tells it
 * without asking for a permission (Deno with `--allow-sys`, Node and Bun through `os`), else 4 GiB. Half,
 * because the host arrays share the machine with the program, the runtime and the rest of the system, and
 * a process that runs the machine out of memory is killed rather than told.
 */
export function defaultCpuMemoryLimit(): number {
  const g = globalThis as {
    Deno?: {
      permissions?: { querySync?: (d: { name: "sys"; kind: "systemMemoryInfo" }) => { state: string } };
      systemMemoryInfo?: () => { total: number };
    };
    process?: { getBuiltinModule?: (name: string) => { totalmem?: () => number } | undefined };
  };
  try {
    const deno = g.Deno;
    if (deno !== undefined) {
      // Querying first: calling without the permission would prompt on a terminal.
      const state = deno.permissions?.querySync?.({ name: "sys", kind: "systemMemoryInfo" }).state;
      if (state === "granted" && deno.systemMemoryInfo) return Math.floor(deno.systemMemoryInfo().total / 2);
      return FALLBACK_LIMIT_BYTES;
    }
    const total = g.process?.getBuiltinModule?.("os")?.totalmem?.();
    if (typeof total === "number" && total > 0) return Math.floor(total / 2);
  } catch {
    // No way to ask: the fallback.
  }
  return FALLBACK_LIMIT_BYTES;
}

/** Creates the CPU reference backend. */
export function createCpuBackend(): Backend {
  let liveBuffers = 0;
  let liveBytes = 0;
  let peakBytes = 0;
  let limit: number | null = defaultCpuMemoryLimit();
  /** Per-op host times while profiling, else null. */
  let profile: Map<string, { calls: number; ms: number }> | null = null;
  const track = (s: CpuStorage): CpuStorage => {
    liveBuffers++;
    liveBytes += s.size * dtypeSize(s.dtype);
    if (liveBytes > peakBytes) peakBytes = liveBytes;
    return s;
  };
  /** Throws a DeviceError naming `what` when `bytes` more would pass the limit (before computing). */
  const reserve = (bytes: number, what: string): void => {
    if (limit !== null && liveBytes + bytes > limit) {
      throw new DeviceError(
        `${what} needs ${bytes} bytes with ${liveBytes} bytes live, past this device's memory limit of ` +
          `${limit} bytes (setMemoryLimit)`,
      );
    }
  };
  const out = (dtype: DType, data: HostArray) => track(make(dtype, data));
  /** Any kernel record: its checks, then its reference, each output rounded once to its dtype. */
  const run = <A>(record: KernelRecord<A>, inputs: readonly Storage[], args: A): Storage[] => {
    const values = inputs.map(arr);
    record.check?.(inputs, args);
    const specs = record.outputs(inputs, args);
    let bytes = 0;
    for (const sp of specs) bytes += sp.size * dtypeSize(sp.dtype);
    reserve(bytes, specs.length === 1 ? specs[0].what : `${record.name}: ${specs.length} outputs`);
    return record.reference(values, args, specs).map((v, i) => out(specs[i].dtype, v));
  };

  const backend: Backend = {
    kind: "cpu",
    description: "CPU reference",
    supportsDType: () => true,

    upload(data, dtype) {
      reserve(data.length * dtypeSize(dtype), `upload: tensor of ${data.length} elements (${dtype})`);
      const a = hostArray(dtype, data.length);
      // A same-type copy moves bits: a packed quantized weight's words may look like signaling NaNs, which
      // an element-by-element copy through JS numbers would quieten (changing the codes).
      if (dtype !== "f64" && data instanceof Float32Array) a.set(data);
      else for (let i = 0; i < data.length; i++) a[i] = data[i];
      return out(dtype, a);
    },
    write(dst, data) {
      const a = arr(dst);
      if (data.length !== a.length) {
        throw new ShapeError(`write: ${data.length} values for a storage of ${a.length} elements`);
      }
      // As upload: a same-type copy moves bits, then one rounding to the dtype.
      if (dst.dtype !== "f64" && data instanceof Float32Array) a.set(data);
      else for (let i = 0; i < data.length; i++) a[i] = data[i];
      roundInPlace(a, dst.dtype);
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
    memoryStats: () => ({ buffers: liveBuffers, bytes: liveBytes, peakBytes, pooledBytes: 0 }),
    resetPeakMemory() {
      peakBytes = liveBytes;
    },
    get memoryLimit() {
      return limit;
    },
    set memoryLimit(bytes: number | null) {
      limit = bytes;
    },
    beginProfile() {
      profile = new Map();
      return { timestamps: false };
    },
    endProfile(): Promise<ProfileRow[]> {
      const rows = [...(profile ?? new Map()).entries()].map(([name, r]) => ({ name, ...r }));
      profile = null;
      return Promise.resolve(rows);
    },

    fill: (size, value, dtype) => run(FILL, [], { size, value, dtype })[0],
    cast: (x, dtype) => run(CAST, [x], { dtype })[0],
    unary: (op, x) => run(UNARY, [x], { op })[0],
    affine: (x, mul, add) => run(AFFINE, [x], { mul, add })[0],
    binary: (op, a, aShape, b, bShape, outShape) => run(BINARY, [a, b], { op, aShape, bShape, outShape })[0],
    sumAxis: (x, outer, n, inner) => run(REDUCE_COLS, [x], { op: "sum", outer, n, inner })[0],
    maxAxis: (x, outer, n, inner) => run(REDUCE_COLS, [x], { op: "max", outer, n, inner })[0],
    softmax: (x, rows, n, log) => run(SOFTMAX, [x], { rows, n, log })[0],
    matmul(a, b, { batch, aBatch, bBatch, m, k, n, transA, transB }, bias) {
      if (bias != null && bias.size !== n) {
        throw new ShapeError(`matmul: bias of ${bias.size} elements for ${n} output columns`);
      }
      if (bias != null && bias.dtype !== a.dtype) {
        throw new DTypeError(`matmul: bias is ${bias.dtype} but the operands are ${a.dtype}`);
      }
      reserve(batch * m * n * dtypeSize(a.dtype), `matmul: output [${batch}, ${m}, ${n}] (${a.dtype})`);
      const av = arr(a), bv = arr(b);
      // The bias joins each sum in f64, so the result is rounded once (as the GEMM's store does).
      const bz = bias == null ? null : arr(bias);
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
              r[ro + j] = bz === null ? s : s + bz[j];
            }
          } else {
            acc.fill(0);
            for (let p = 0; p < k; p++) {
              const x = row[p], po = bo + p * n;
              for (let j = 0; j < n; j++) acc[j] += x * bv[po + j];
            }
            if (bz !== null) { for (let j = 0; j < n; j++) acc[j] += bz[j]; }
            r.set(acc, ro);
          }
        }
      }
      return out(a.dtype, r);
    },
    permute: (x, shape, perm) => run(PERMUTE, [x], { shape, perm })[0],
    gatherRows: (table, ids, dim) => run(GATHER_ROWS, [table], { ids, dim })[0],
    scatterAddRows: (src, ids, rows, dim) => run(SCATTER_ADD_ROWS, [src], { ids, rows, dim })[0],
    pick: (x, idx, n) => run(PICK, [x], { idx, n })[0],
    unpick: (src, idx, n) => run(UNPICK, [src], { idx, n })[0],
    pack(parts, offsets, total, dtype) {
      checkPack(parts, offsets, total, dtype);
      const r = hostArray(dtype, total);
      parts.forEach((s, i) => s !== null && r.set(arr(s), offsets[i]));
      return out(dtype, r);
    },
    unpack(packed, offsets, sizes) {
      checkSegments("unpack", offsets, sizes, packed.size, packed.dtype);
      const v = arr(packed);
      return offsets.map((o, i) => out(packed.dtype, v.slice(o, o + sizes[i])));
    },
    dropoutMask: (size, p, seed, dtype) => run(DROPOUT_MASK, [], { size, p, seed, dtype })[0],
    loraInner(args) {
      checkLoraInner("loraInner", args);
      reserve(args.m * args.rank * dtypeSize("f64"), `loraInner: x·Aᵀ [${args.m}, ${args.rank}] (f64)`);
      return out("f64", loraInner(args, droppedInput(args)));
    },
    loraForward(args) {
      checkSavedInner("loraForward", args);
      reserve(
        args.m * args.outFeatures * dtypeSize(args.x.dtype),
        `loraForward: output [${args.m}, ${args.outFeatures}]`,
      );
      return out(args.x.dtype, loraForwardRef(args));
    },
    loraBackward(args) {
      checkSavedInner("loraBackward", args);
      const { m, inFeatures: K, outFeatures: N, rank: R } = args;
      reserve(
        ((args.needDx ? m * K : 0) + R * (K + N)) * dtypeSize(args.x.dtype),
        `loraBackward: gradients of [${N}, ${K}] rank ${R}`,
      );
      const g = loraBackwardRef(args);
      const dtype = args.x.dtype;
      return {
        dx: g.dx && out(dtype, g.dx),
        dA: out(args.a.dtype, g.dA),
        dB: out(args.b.dtype, g.dB),
      } as LoraGrads;
    },
    run,
    sync: () => Promise.resolve(),
    destroy() {},
  };
  // While profiling, every op's host time is added to its row. The ops call the closure `run` and never
  // each other through `backend`, so nothing is counted twice.
  const timed = backend as unknown as Record<string, unknown>;
  for (const name of Object.keys(backend) as (keyof Backend)[]) {
    if (UNTIMED.has(name)) continue;
    const desc = Object.getOwnPropertyDescriptor(backend, name);
    const fn = desc?.value;
    if (typeof fn !== "function") continue;
    timed[name] = (...callArgs: unknown[]) => {
      if (profile === null) return fn(...callArgs);
      const row = name === "run" ? (callArgs[0] as KernelRecord<unknown>).name : name;
      const t0 = performance.now();
      try {
        return fn(...callArgs);
      } finally {
        const ms = performance.now() - t0;
        const r = profile?.get(row);
        if (r === undefined) profile?.set(row, { calls: 1, ms });
        else {
          r.calls++;
          r.ms += ms;
        }
      }
    };
  }
  return backend;
}

/** Backend members that are not ops, so a profile does not list them. */
const UNTIMED = new Set<string>([
  "supportsDType",
  "memory",
  "memoryStats",
  "resetPeakMemory",
  "memoryLimit",
  "beginProfile",
  "endProfile",
  "sync",
  "destroy",
  "free",
  "readSync",
  "read",
]);

/** The base weight's values: dequantized from its packed words when quantized. */
function baseWeight(args: LoraForwardArgs | LoraBackwardArgs): HostArray {
  return args.wQuant ? dequantizeValues(arr(args.w), args.wQuant) : arr(args.w);
}

/** x after pre-dropout (or x itself), as f64. */
function droppedInput(args: LoraInnerArgs): Float64Array {
  const x = arr(args.x);
  const xd = Float64Array.from(x);
  const d = args.dropout;
  if (d && d.position === "pre" && d.p > 0) {
    const th = dropoutThreshold(d.p), keep = dropoutKeepScale(d.p);
    for (let i = 0; i < xd.length; i++) xd[i] *= dropoutFactor(d.seed, i, th, keep);
  }
  return xd;
}

/** Throws ShapeError unless x is [m, in] and lora_A [rank, in] (loraInner's own operands). */
function checkLoraInner(op: string, args: LoraInnerArgs): void {
  const { m, inFeatures: K, rank: R } = args;
  if (args.x.size !== m * K || args.a.size !== R * K) {
    throw new ShapeError(
      `${op}: x of ${args.x.size} elements and lora_A of ${args.a.size} do not fit [${m}, ${K}] and [${R}, ${K}]`,
    );
  }
}

/** Throws unless a given `inner` is what {@link loraInner} makes for these operands: [m, rank] f64. */
function checkSavedInner(op: string, args: LoraForwardArgs | LoraBackwardArgs): void {
  const t = args.inner;
  if (t === undefined || t === null) return;
  if (t.size !== args.m * args.rank) {
    throw new ShapeError(`${op}: inner of ${t.size} elements is not x·Aᵀ [${args.m}, ${args.rank}]`);
  }
  if (t.dtype !== "f64") throw new DTypeError(`${op}: inner is ${t.dtype}; the CPU's loraInner makes f64`);
}

/** The call's given t (see {@link checkSavedInner}), else t computed from the dropped input and A. */
function innerOf(args: LoraForwardArgs | LoraBackwardArgs, dropped: () => Float64Array): Float64Array {
  const t = args.inner;
  return t === undefined || t === null ? loraInner(args, dropped()) : arr(t) as Float64Array;
}

/** t = drop_pre(x) A^T, [m, rank] in f64: the intermediate the fused op keeps only for a backward. */
function loraInner(args: LoraInnerArgs, xd: Float64Array): Float64Array {
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
  const x = arr(args.x), W = baseWeight(args), B = arr(args.b);
  const bias = args.bias ? arr(args.bias) : null;
  const t = innerOf(args, () => droppedInput(args));
  const d = args.dropout;
  const post = d && d.position === "post" && d.p > 0;
  const th = post ? dropoutThreshold(d.p) : 0, keep = post ? dropoutKeepScale(d.p) : 1;
  const y = hostArray(args.x.dtype, m * N);
  for (let i = 0; i < m; i++) {
    for (let o = 0; o < N; o++) {
      // The bias joins after the dot product, in the base matmul's order, so that a zero B gives
      // exactly the base linear's output (an earlier bias-first sum differed near zero by cancellation).
      let base = 0;
      for (let k = 0; k < K; k++) base += x[i * K + k] * W[o * K + k];
      if (bias) base += bias[o];
      let lora = 0;
      for (let r = 0; r < R; r++) lora += t[i * R + r] * B[o * R + r];
      lora *= scale;
      if (post) lora *= dropoutFactor(d.seed, i * N + o, th, keep);
      y[i * N + o] = base + lora;
    }
  }
  return y;
}

/** Reference for the fused backward: dx = dy W + scale (dyl B) A (masked), dA, dB. */
function loraBackwardRef(args: LoraBackwardArgs): { dx: HostArray | null; dA: HostArray; dB: HostArray } {
  const { m, inFeatures: K, outFeatures: N, rank: R, scale } = args;
  const dy = arr(args.dy), W = baseWeight(args), A = arr(args.a), B = arr(args.b);
  const d = args.dropout;
  const pre = d !== null && d.position === "pre" && d.p > 0;
  const post = d !== null && d.position === "post" && d.p > 0;
  const th = d ? dropoutThreshold(d.p) : 0, keep = d ? dropoutKeepScale(d.p) : 1;
  // Gradient reaching B(A(.)) before the scale: post-dropout masks it.
  const dyl = Float64Array.from(dy);
  if (post) { for (let i = 0; i < dyl.length; i++) dyl[i] *= dropoutFactor(d!.seed, i, th, keep); }
  const xd = droppedInput(args);
  const t = innerOf(args, () => xd);
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
        if (pre) lora *= dropoutFactor(d!.seed, i * K + k, th, keep);
        dx[i * K + k] = base + lora;
      }
    }
  }
  const dA = hostArray(args.a.dtype, R * K);
  for (let r = 0; r < R; r++) {
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let i = 0; i < m; i++) s += g[i * R + r] * xd[i * K + k];
      dA[r * K + k] = scale * s;
    }
  }
  const dB = hostArray(args.b.dtype, N * R);
  for (let o = 0; o < N; o++) {
    for (let r = 0; r < R; r++) {
      let s = 0;
      for (let i = 0; i < m; i++) s += dyl[i * N + o] * t[i * R + r];
      dB[o * R + r] = scale * s;
    }
  }
  return { dx, dA, dB };
}
