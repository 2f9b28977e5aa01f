/**
 * Helpers of the GPU suite: identical random inputs for the WebGPU and CPU backends, running one
 * computation on both, and the tolerances every kernel must meet (relative error ≤ 1e-4 for f32,
 * ≤ 1e-2 for f16).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { cpuDevice, type Device, type DType } from "../../../mod.ts";
import type { Backend, FusedDropout, Storage } from "../../../src/backend/backend.ts";
import { roundToF16 } from "../../../src/core/half.ts";
import { Rng } from "../../../src/core/random.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import type { GemmProfile } from "../../../src/backend/webgpu/gemm_plan.ts";
import { relErr } from "../../helpers.ts";

/** The storage dtypes WebGPU has. */
export type FloatType = "f32" | "f16";

/** Relative error allowed against the CPU reference. */
export const TOL: Record<FloatType, number> = { f32: 1e-4, f16: 1e-2 };

/** Worst relative error seen per property name (printed at the end of a test file for the report). */
export const worst = new Map<string, number>();

/** Records an error for {@link worst}. */
export function note(name: string, err: number): void {
  worst.set(name, Math.max(worst.get(name) ?? 0, err));
}

/** Prints the worst errors recorded so far. */
export function printWorst(file: string): void {
  const lines = [...worst].map(([k, v]) => `  ${k}: ${v.toExponential(2)}`);
  console.log(`worst relative errors (${file}):\n${lines.join("\n")}`);
}

/** Dtypes the property tests draw from: f16 only where the device has it. */
export function floatTypes(device: Device): fc.Arbitrary<FloatType> {
  return device.supportsDType("f16")
    ? fc.constantFrom<FloatType>("f32", "f16")
    : fc.constant<FloatType>("f32");
}

/** A dimension in 1..max, biased towards primes and tile edges. */
export function dim(max = 300): fc.Arbitrary<number> {
  const special = [1, 2, 3, 5, 7, 13, 31, 61, 63, 64, 65, 127, 128, 129, 251, 257, 293].filter((d) =>
    d <= max
  );
  return fc.oneof(fc.integer({ min: 1, max }), fc.constantFrom(...special));
}

/** The smallest normal f32; GPUs may flush anything smaller to zero (WGSL allows it). */
export const MIN_NORMAL_F32 = 2 ** -126;

/**
 * A double in [min, max] that is 0 or far from the f32 subnormal range: products with it stay normal,
 * so that results do not depend on whether a GPU flushes subnormals (see the named scale test).
 */
export function factor(min: number, max: number): fc.Arbitrary<number> {
  return fc.double({ min, max, noNaN: true }).map((v) => (Math.abs(v) < 1e-20 ? 0 : v));
}

/** A seed for {@link values}. */
export const seedArb: fc.Arbitrary<number> = fc.integer({ min: 0, max: 0x7fffffff });

/** The fused LoRA linear's dropout: none, or p in [0.05, 0.9] on its input ("pre") or its LoRA term ("post"). */
export const fusedDropoutArb: fc.Arbitrary<FusedDropout | null> = fc.oneof(
  fc.constant(null),
  fc.record({
    p: fc.double({ min: 0.05, max: 0.9, noNaN: true }),
    seed: fc.integer({ min: 0, max: 0xffffffff }),
    position: fc.constantFrom<"pre" | "post">("pre", "post"),
  }),
);

/** How {@link values} draws: standard normal, or uniform in [lo, hi). */
export type Dist = "normal" | { lo: number; hi: number };

/** `n` seeded random values, already rounded to f16 for f16 so that both backends see the same inputs. */
export function values(n: number, seed: number, dtype: FloatType, dist: Dist = "normal"): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = dist === "normal" ? rng.normal() : dist.lo + (dist.hi - dist.lo) * rng.uniform();
    out[i] = dtype === "f16" ? roundToF16(v) : v;
  }
  return out;
}

/** Uploads host arrays to a backend and frees everything uploaded afterwards. */
export class Uploads {
  readonly #made: Storage[] = [];
  constructor(readonly be: Backend, readonly dtype: DType) {}
  /** A storage of `data` (kept alive until {@link freeAll}). */
  up(data: ArrayLike<number>): Storage {
    const s = this.be.upload(data, this.dtype);
    this.#made.push(s);
    return s;
  }
  /** Frees every storage made here (and `extra`). */
  freeAll(...extra: (Storage | null)[]): void {
    for (const s of [...this.#made, ...extra]) if (s !== null) this.be.free(s);
  }
}

/**
 * Runs `f` on the WebGPU backend and on the CPU reference with the same inputs and returns both results
 * as host arrays. Frees every storage afterwards and checks that the GPU backend's live memory is back
 * where it was (no leaks).
 */
export async function onBoth(
  device: Device,
  dtype: FloatType,
  f: (u: Uploads) => Storage | Storage[],
): Promise<{ gpu: Float32Array[]; cpu: Float32Array[] }> {
  const before = device.backend.memory();
  const run = async (be: Backend) => {
    const u = new Uploads(be, dtype);
    const outs = [f(u)].flat();
    const host = [];
    for (const s of outs) host.push(Float32Array.from(await be.read(s)));
    u.freeAll(...outs);
    return host;
  };
  const gpu = await run(device.backend);
  const cpu = await run(cpuDevice().backend);
  assert.deepEqual(device.backend.memory(), before, "GPU storages leaked");
  return { gpu, cpu };
}

/**
 * Asserts relative error within the dtype's tolerance and records it under `name`. Non-finite values
 * (f16 overflows) must match the reference element for element; the error is measured over the rest.
 */
export function assertClose(
  name: string,
  ours: ArrayLike<number>,
  ref: ArrayLike<number>,
  dtype: FloatType,
): void {
  assert.equal(ours.length, ref.length, `${name}: lengths differ`);
  const finiteOurs: number[] = [], finiteRef: number[] = [];
  for (let i = 0; i < ref.length; i++) {
    if (Number.isFinite(ours[i]) && Number.isFinite(ref[i])) {
      finiteOurs.push(ours[i]);
      finiteRef.push(ref[i]);
    } else {
      assert.ok(
        Object.is(ours[i], ref[i]),
        `${name} (${dtype}): element ${i} is ${ours[i]}, reference ${ref[i]}`,
      );
    }
  }
  const e = relErr(finiteOurs, finiteRef);
  note(`${name} ${dtype}`, e);
  assert.ok(e <= TOL[dtype], `${name} (${dtype}): relative error ${e} > ${TOL[dtype]}`);
}

/** Runs `fn` with the WebGPU backend forced onto `profile`, restoring its own profile afterwards. */
export async function withGemmProfile(
  be: WebGpuBackend,
  profile: GemmProfile,
  fn: () => Promise<void>,
): Promise<void> {
  const own = be.gemmProfile;
  be.gemmProfile = profile;
  try {
    await fn();
  } finally {
    be.gemmProfile = own;
  }
}

/** One fused LoRA linear case of the GEMM property tests. */
export interface FusedLoraCase {
  m: number;
  inF: number;
  outF: number;
  rank: number;
  bias: boolean;
  dropout: FusedDropout | null;
}

/**
 * The fused LoRA forward and backward (y, dA, dB, dx, scale 2) of inputs drawn from `seed`, on the GPU
 * and on the CPU reference: what every GEMM schedule's LoRA property compares.
 */
export function fusedLoraOnBoth(
  device: Device,
  dtype: FloatType,
  c: FusedLoraCase,
  seed: number,
): Promise<{ gpu: Float32Array[]; cpu: Float32Array[] }> {
  const v = (n: number, k: number) => values(n, seed + k, dtype);
  const sizes = {
    m: c.m,
    inFeatures: c.inF,
    outFeatures: c.outF,
    rank: c.rank,
    scale: 2,
    dropout: c.dropout,
  };
  return onBoth(device, dtype, (u) => {
    const x = u.up(v(c.m * c.inF, 0)), w = u.up(v(c.outF * c.inF, 1));
    const a = u.up(v(c.rank * c.inF, 2)), b = u.up(v(c.outF * c.rank, 3));
    const bias = c.bias ? u.up(v(c.outF, 4)) : null;
    const y = u.be.loraForward({ x, w, a, b, bias, ...sizes });
    const dy = u.up(v(c.m * c.outF, 5));
    const g = u.be.loraBackward({ x, w, a, b, dy, needDx: true, ...sizes });
    return [y, g.dA, g.dB, g.dx!];
  });
}
