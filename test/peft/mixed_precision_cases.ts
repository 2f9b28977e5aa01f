/**
 * Mixed precision cases shared by the CPU and WebGPU tests: an f16 base Linear with f32 LoRA adapters
 * through the fused op, against the composed path (base linear in f16, adapters in f32, cast, add) on
 * the same device, forward and backward, with dropout before or after the adapters or none.
 */
import assert from "node:assert/strict";
import { AdamW, type Device, Linear, patchLinearModule, randn, sum, tensor } from "../../mod.ts";
import type { Backend } from "../../src/backend/backend.ts";
import { relErr } from "../helpers.ts";

/** One mixed-precision layer shape. */
export interface MixedCase {
  m: number;
  inF: number;
  outF: number;
  rank: number;
  bias: boolean;
  dropout: number;
  position: "pre" | "post";
  /** The base's and the adapters' dtypes (default f16 and f32). */
  base?: "f16" | "f32";
  adapters?: "f16" | "f32";
}

/** Shapes with odd sizes, a rank-1 adapter, bias or not, dropout before, after or none. */
export const MIXED_CASES: MixedCase[] = [
  { m: 5, inF: 13, outF: 7, rank: 3, bias: true, dropout: 0, position: "pre" },
  { m: 16, inF: 64, outF: 48, rank: 8, bias: false, dropout: 0, position: "pre" },
  { m: 9, inF: 31, outF: 33, rank: 1, bias: true, dropout: 0.25, position: "pre" },
  { m: 12, inF: 40, outF: 20, rank: 4, bias: false, dropout: 0.5, position: "post" },
  // The other way round (PEFT's lora_dtype=float16 over an f32 model) takes the fused path too.
  { m: 7, inF: 24, outF: 10, rank: 2, bias: true, dropout: 0, position: "pre", base: "f32", adapters: "f16" },
];

/** Counts the fused LoRA calls of a backend while `f` runs (the fused path must be taken, no fallback). */
async function countFused<T>(
  be: Backend,
  f: () => Promise<T>,
): Promise<{ result: T; fwd: number; bwd: number }> {
  const fwd0 = be.loraForward, bwd0 = be.loraBackward;
  let fwd = 0, bwd = 0;
  be.loraForward = (a) => (fwd++, fwd0.call(be, a));
  be.loraBackward = (a) => (bwd++, bwd0.call(be, a));
  try {
    return { result: await f(), fwd, bwd };
  } finally {
    be.loraForward = fwd0;
    be.loraBackward = bwd0;
  }
}

/** y, dx, dA, dB of one layer path (fused or composed) on `device`; weights and data from `seed`. */
async function runPath(device: Device, c: MixedCase, fused: boolean, seed: number) {
  const [bt, at] = [c.base ?? "f16", c.adapters ?? "f32"];
  const base = new Linear(c.inF, c.outF, { bias: c.bias, device, dtype: bt, seed });
  const layer = patchLinearModule(base, {
    dim: c.rank,
    alpha: 2 * c.rank,
    dropout: c.dropout,
    dropoutPosition: c.position,
    loraDtype: at,
    useFused: fused,
    seed: seed + 1,
  });
  layer.dropoutSeed = 1234;
  // lora_B starts at zero; random values make the adapter's term and dA non-trivial.
  const B = layer.lora_B.weight;
  B._assign(randn(B.shape, { device, dtype: at, seed: seed + 2 }).detach());
  B.requiresGrad = true;
  const x = randn([c.m, c.inF], { device, dtype: bt, seed: seed + 3, requiresGrad: true });
  const dy = randn([c.m, c.outF], { device, dtype: bt, seed: seed + 4 });
  const y = layer.forward(x);
  sum(y.mul(dy)).backward();
  const A = layer.lora_A.weight;
  assert.equal(y.dtype, bt, "the output keeps the base dtype");
  assert.equal(x.grad!.dtype, bt, "dx keeps the base dtype");
  assert.equal(A.grad!.dtype, at, "dA is in the adapters' dtype");
  assert.equal(B.grad!.dtype, at, "dB is in the adapters' dtype");
  const out = {
    y: await y.data(),
    dx: await x.grad!.data(),
    dA: await A.grad!.data(),
    dB: await B.grad!.data(),
  };
  return { out, layer };
}

/**
 * Runs one case on `device`: the fused path (checked to call the fused kernels, once each way) against
 * the composed one; returns the relative errors of y, dx, dA and dB. Then one AdamW step on the f32
 * adapters: finite, f32 state.
 */
export async function runMixedCase(device: Device, c: MixedCase, seed = 11): Promise<Record<string, number>> {
  const fused = await countFused(device.backend, () => runPath(device, c, true, seed));
  assert.equal(fused.fwd, 1, "the fused forward ran (no fallback to the composed path)");
  assert.equal(fused.bwd, 1, "the fused backward ran");
  const composed = await countFused(device.backend, () => runPath(device, c, false, seed));
  assert.equal(composed.fwd, 0, "the composed reference does not use the fused op");
  const errs: Record<string, number> = {};
  for (const k of ["y", "dx", "dA", "dB"] as const) {
    errs[k] = relErr(fused.result.out[k], composed.result.out[k]);
  }
  const layer = fused.result.layer;
  const opt = new AdamW(layer.trainableParameters(), { lr: 1e-3 });
  opt.step();
  for (const p of layer.trainableParameters()) {
    assert.ok((await p.data()).every(Number.isFinite), "adapters stay finite after a step");
  }
  assert.equal(opt.state[0]!.expAvgSq.dtype, "f32");
  return errs;
}

/**
 * f16 parameters under AdamW with eps 1e-8: finite after several steps, moments f32, the update equal
 * to the f32 computation rounded once to f16.
 */
export async function runF16AdamW(device: Device): Promise<void> {
  const p0 = [0.5, -0.25, 1e-3, 2, -3, 0.125, 7];
  const g = [1e-7, -2e-8, 0, 0.5, -1e-4, 3e-6, 1];
  const p16 = tensor(p0, [7], { device, dtype: "f16", requiresGrad: true });
  const p32 = tensor(await p16.data(), [7], { device, dtype: "f32", requiresGrad: true });
  const o16 = new AdamW([p16], { lr: 1e-2 }), o32 = new AdamW([p32], { lr: 1e-2 });
  for (let t = 0; t < 3; t++) {
    p16.grad = tensor(g, [7], { device, dtype: "f16" });
    p32.grad = tensor(await p16.grad.data(), [7], { device, dtype: "f32" });
    o16.step();
    o32.step();
    // The f32 twin runs from the same f16 values each step, so one rounding separates the two.
    const want = await tensor(await p32.data(), [7], { device, dtype: "f16" }).data();
    const got = await p16.data();
    assert.ok(got.every(Number.isFinite), `f16 parameters finite after step ${t + 1}: ${got}`);
    assert.deepEqual(Array.from(got), Array.from(want), `step ${t + 1}: f32 update rounded once`);
    p32._assign(tensor(got, [7], { device, dtype: "f32" }));
  }
  assert.equal(o16.state[0]!.expAvg.dtype, "f32");
  assert.equal(o16.state[0]!.expAvgSq.dtype, "f32");
}
