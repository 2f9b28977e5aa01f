/**
 * Recording GEMMs: the tiled matmul kernel (batched, transposed, dropout on load, split-K with a reduce)
 * and the two-phase LoRA output kernel. Results are raw buffers; the backend wraps them as storages.
 * @module
 */
import type { FusedDropout } from "../backend.ts";
import { f32Bits } from "../../tensor/dtype.ts";
import { dropoutKeepScale, dropoutThreshold } from "../../tensor/random.ts";
import { GEMM_TILE, GEMM_WG, type PipelineCache, WORKGROUP_SIZE } from "./kernels.ts";
import type { Binding, GpuRuntime, Grid } from "./runtime.ts";

/** WGSL name of a storage element type. */
export type WgslType = "f32" | "f16";

/** What recording needs: the runtime and the pipelines. */
export interface GemmContext {
  rt: GpuRuntime;
  kernels: PipelineCache;
}

/** Bytes a buffer of `size` elements of `type` occupies (padded to 4, at least 4). */
export function bufferBytes(size: number, type: WgslType): number {
  return Math.max(4, Math.ceil((size * (type === "f16" ? 2 : 4)) / 4) * 4);
}

/** Dropout parameters as kernel words: seed, threshold, keep-scale bits (no dropout: keep everything). */
export function dropoutWords(d: FusedDropout | null): [number, number, number] {
  if (d === null) return [0, 0, f32Bits(1)];
  return [d.seed >>> 0, dropoutThreshold(d.p), f32Bits(dropoutKeepScale(d.p))];
}

/** One operand of a GEMM: its buffer, element type, layout and dropout flag. */
export interface GemmOperand {
  bind: Binding;
  type: WgslType;
  /** Stored transposed (see matmul.wgsl). */
  trans: boolean;
  /** Elements between batch entries; 0 broadcasts one matrix over the batch. */
  zStride?: number;
  /** Multiply each element by its dropout factor (keyed by its index in storage). */
  masked?: boolean;
}

/** A GEMM request: C = alpha · op(A) · op(B), batched. */
export interface GemmRequest {
  a: GemmOperand;
  b: GemmOperand;
  m: number;
  n: number;
  k: number;
  batch?: number;
  alpha?: number;
  /** The dropout applied to the operand flagged `masked`. */
  dropout?: FusedDropout | null;
  outType: WgslType;
  /** Names the op and result for size-limit errors. */
  what: string;
}

/**
 * How many k slices a GEMM with few output tiles splits into, so that enough workgroups run (and the
 * partial sums fit one binding). Deep, narrow products are the LoRA gradients dA and dB: k is the token
 * count, the output only rank × features.
 */
export function splitCount(m: number, n: number, k: number, maxBindingBytes: number): number {
  const tiles = Math.ceil(m / GEMM_TILE.BM) * Math.ceil(n / GEMM_TILE.BN);
  if (tiles >= 128 || k < 128) return 1;
  let s = Math.min(Math.floor(k / 64), Math.ceil(256 / tiles), 64);
  while (s > 1 && s * m * n * 4 > maxBindingBytes) s = Math.floor(s / 2);
  return Math.max(1, s);
}

/** Records C = alpha · op(A) · op(B) into a new buffer of batch·m·n `outType` elements. */
export function recordGemm(ctx: GemmContext, req: GemmRequest): Binding {
  const { rt, kernels } = ctx;
  const { a, b, m, n, k, outType } = req;
  const batch = req.batch ?? 1;
  const alpha = req.alpha ?? 1;
  const outBytes = bufferBytes(batch * m * n, outType);
  const out = { buf: rt.alloc(outBytes, req.what), bytes: outBytes };
  if (batch * m * n === 0) return out;
  const { BM, BN, BK } = GEMM_TILE;
  const tiles: [number, number] = [Math.ceil(n / BN), Math.ceil(m / BM)];
  const [seed, threshold, keep] = dropoutWords(req.dropout ?? null);
  const spec = (cType: WgslType) => ({
    A_T: a.type,
    B_T: b.type,
    C_T: cType,
    TRANS_A: a.trans,
    TRANS_B: b.trans,
    MASK_A: a.masked === true,
    MASK_B: b.masked === true,
    ...GEMM_TILE,
    WG: GEMM_WG,
  });
  const splits = batch === 1 ? splitCount(m, n, k, rt.limits.maxStorageBufferBindingSize) : 1;
  if (splits === 1) {
    const kernel = kernels.get("matmul", spec(outType));
    const maxZ = rt.limits.maxComputeWorkgroupsPerDimension;
    for (let z0 = 0; z0 < batch; z0 += maxZ) {
      const params = [
        m,
        n,
        k,
        a.zStride ?? 0,
        b.zStride ?? 0,
        m * n,
        0,
        k,
        z0,
        seed,
        threshold,
        keep,
        f32Bits(alpha),
      ];
      rt.dispatch(kernel, params, [a.bind, b.bind, out], [...tiles, Math.min(maxZ, batch - z0)]);
    }
    return out;
  }
  // Split-K: slice z sums k in [z · chunk, (z + 1) · chunk) into its own partial product, then one
  // kernel adds the slices and applies alpha.
  const chunk = Math.ceil(Math.ceil(k / splits) / BK) * BK;
  const slices = Math.ceil(k / chunk);
  const partBytes = bufferBytes(slices * m * n, "f32");
  const part = { buf: rt.alloc(partBytes, `${req.what} (split-K partial sums)`), bytes: partBytes };
  const params = [m, n, k, 0, 0, m * n, chunk, chunk, 0, seed, threshold, keep, f32Bits(1)];
  rt.dispatch(kernels.get("matmul", spec("f32")), params, [a.bind, b.bind, part], [...tiles, slices]);
  const reduce = kernels.get("splitk_reduce", { T: outType, WG: WORKGROUP_SIZE });
  rt.dispatch(reduce, [m * n, slices, f32Bits(alpha)], [part, out], rt.grid1d(m * n, WORKGROUP_SIZE));
  rt.release(part.buf);
  return out;
}

/** The operands of the two-phase LoRA output kernel (see lora_out.wgsl for their roles). */
export interface LoraOutRequest {
  p: Binding;
  q: Binding;
  x: Binding;
  w: Binding;
  bias: Binding | null;
  m: number;
  n: number;
  k: number;
  r: number;
  scale: number;
  /** The dropout whose mask multiplies the LoRA term, keyed by output index. */
  dropout: FusedDropout | null;
  trans: boolean;
  type: WgslType;
  what: string;
}

/** Records y = scale · mask ⊙ (P · op(Q)) + X · op(W) (+ bias) into a new [m, n] buffer. */
export function recordLoraOut(ctx: GemmContext, o: LoraOutRequest): Binding {
  const bytes = bufferBytes(o.m * o.n, o.type);
  const out = { buf: ctx.rt.alloc(bytes, o.what), bytes };
  if (o.m * o.n === 0) return out;
  const spec = {
    T: o.type,
    TRANS: o.trans,
    MASK: o.dropout !== null,
    BIAS: o.bias !== null,
    ...GEMM_TILE,
    WG: GEMM_WG,
  };
  const params = [o.m, o.n, o.k, o.r, ...dropoutWords(o.dropout), f32Bits(o.scale)];
  const grid: Grid = [Math.ceil(o.n / GEMM_TILE.BN), Math.ceil(o.m / GEMM_TILE.BM), 1];
  ctx.rt.dispatch(ctx.kernels.get("lora_out", spec), params, [o.p, o.q, o.x, o.w, o.bias, out], grid);
  return out;
}
