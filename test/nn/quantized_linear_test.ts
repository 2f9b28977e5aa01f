/**
 * `quantizedLinear` with a fused LoRA term (src/nn/quantized_linear.ts, QLoRA's layer) keeps t =
 * drop_pre(x)·Aᵀ from its forward for its backward as `loraLinear` does, on the CPU reference and on
 * WebGPU: only when the call records a backward (never without an adapter), freed by the backward and by a
 * tidy scope that drops the graph, never leaked; its gradients equal the CPU's (dropout before and after
 * the adapter) and bit for bit those of a backward recomputing t, which dispatches loraInner's kernels
 * more on WebGPU.
 */
import assert from "node:assert/strict";
import {
  cpuDevice,
  type Device,
  noGrad,
  profile,
  type Tensor,
  tensor,
  tidy,
  webgpuDevice,
} from "../../mod.ts";
import type { FusedDropout } from "../../src/backend/backend.ts";
import { packWeight, quantizedLinear } from "../../src/nn/quantized_linear.ts";
import { Rng } from "../../src/core/random.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";
import { relErr, takeValues } from "../helpers.ts";

const M = 6, IN = 16, OUT = 5, RANK = 2;

/** Seeded normal values. */
function normal(n: number, seed: number): number[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => rng.normal());
}

/** An NF4 layer on `device` (f32) with x, A and B requiring grad, and dy. */
function layer(device: Device) {
  const t = (shape: number[], seed: number, requiresGrad = false) =>
    tensor(normal(shape[0] * (shape[1] ?? 1), seed), shape, { device, requiresGrad });
  const w = t([OUT, IN], 2);
  const { packed, layout } = packWeight(w, "nf4", 8);
  w.dispose();
  const ops = {
    x: t([M, IN], 1, true),
    bias: t([OUT], 3),
    a: t([RANK, IN], 4, true),
    b: t([OUT, RANK], 5, true),
  };
  const dy = t([M, OUT], 6);
  return {
    ...ops,
    dy,
    forward: (dropout: FusedDropout | null = null, adapter = true) =>
      quantizedLinear(
        ops.x,
        packed,
        layout,
        OUT,
        IN,
        ops.bias,
        adapter ? { a: ops.a, b: ops.b, scale: 2, dropout } : null,
      ),
    takeGrads(): Tensor[] {
      const leaves = [ops.x, ops.a, ops.b].filter((l) => l.grad !== null);
      const g = leaves.map((l) => l.grad!);
      for (const l of leaves) l.grad = null;
      return g;
    },
    dispose: () => [...Object.values(ops), dy, packed].forEach((o) => o.dispose()),
  };
}

/** Live buffers and bytes of `device`. */
function live(device: Device) {
  const { buffers, bytes } = device.backend.memory();
  return { buffers, bytes };
}

function checkLifetimes(device: Device): void {
  const initial = live(device);
  const l = layer(device);
  const start = live(device);
  const at = (buffers: number, bytes: number, what: string) =>
    assert.deepEqual(live(device), { buffers: start.buffers + buffers, bytes: start.bytes + bytes }, what);
  const yBytes = M * OUT * 4, innerBytes = M * RANK * (device.kind === "cpu" ? 8 : 4);
  const gradBytes = (M * IN + RANK * IN + OUT * RANK) * 4;

  const y0 = noGrad(() => l.forward());
  at(1, yBytes, "noGrad forward");
  y0.dispose();
  const y = l.forward({ p: 0.25, seed: 3, position: "pre" });
  at(2, yBytes + innerBytes, "forward recording a backward");
  y.backward(l.dy);
  at(4, yBytes + gradBytes, "after backward: t freed, the three gradients made");
  y.dispose();
  for (const g of l.takeGrads()) g.dispose();
  tidy(() => void l.forward({ p: 0.25, seed: 3, position: "post" }));
  at(0, 0, "forward with grad inside tidy, no backward");
  // Without an adapter there is no t: only the output, and dx after the backward.
  const yn = l.forward(null, false);
  at(1, yBytes, "forward without an adapter");
  yn.backward(l.dy);
  at(2, yBytes + M * IN * 4, "backward without an adapter");
  yn.dispose();
  for (const g of l.takeGrads()) g.dispose();
  l.dispose();
  assert.deepEqual(live(device), initial, "everything disposed");
}

Deno.test("quantizedLinear on the CPU keeps t only for a backward and frees it with it or the scope", () => {
  checkLifetimes(cpuDevice());
});

gpuTest(
  "quantizedLinear on WebGPU keeps t only for a backward and frees it with it or the scope",
  async () => {
    const device = await webgpuDevice();
    try {
      checkLifetimes(device);
    } finally {
      device.destroy();
    }
  },
);

/** dx, dA, dB with t kept, and with t recomputed (the output returned from a tidy scope, which freed t). */
async function grads(device: Device, d: FusedDropout | null) {
  const l = layer(device);
  const y = l.forward(d);
  y.backward(l.dy);
  const kept = await takeValues(l.takeGrads());
  const yr = tidy(() => l.forward(d));
  yr.backward(l.dy);
  const recomputed = await takeValues(l.takeGrads());
  y.dispose();
  yr.dispose();
  l.dispose();
  return { kept, recomputed };
}

for (
  const [name, d] of [
    ["dropout pre", { p: 0.3, seed: 11, position: "pre" }],
    ["dropout post", { p: 0.4, seed: 12, position: "post" }],
  ] as const
) {
  const check = (tag: string, r: Awaited<ReturnType<typeof grads>>) =>
    ["dx", "dA", "dB"].forEach((n, i) => {
      const at = r.kept[i].findIndex((v, j) => !Object.is(v, r.recomputed[i][j]));
      assert.equal(at, -1, `${tag} ${n}: element ${at} differs between t kept and t recomputed`);
    });
  Deno.test(`quantizedLinear + LoRA on the CPU (${name}): gradients with t kept equal those recomputing it`, async () => {
    check(`cpu ${name}`, await grads(cpuDevice(), d));
  });
  gpuTest(
    `quantizedLinear + LoRA on WebGPU (${name}): gradients with t kept equal the CPU's and the recomputed ones`,
    async (gpu) => {
      const g = await grads(gpu, d), c = await grads(cpuDevice(), d);
      check(`webgpu ${name}`, g);
      ["dx", "dA", "dB"].forEach((n, i) => {
        const err = relErr(g.kept[i], c.kept[i]);
        assert.ok(err < 1e-5, `${n}: relative error ${err} against the CPU`);
      });
    },
  );
}

gpuTest(
  "quantizedLinear + LoRA's backward on WebGPU dispatches loraInner's kernels fewer than one recomputing t",
  async (gpu) => {
    const l = layer(gpu);
    const calls = async (fn: () => void) =>
      (await profile(fn, { device: gpu })).rows.reduce((s, r) => s + r.calls, 0);
    const inner = await calls(() =>
      gpu.backend.free(
        gpu.backend.loraInner({
          x: l.x.storage(),
          a: l.a.storage(),
          m: M,
          inFeatures: IN,
          rank: RANK,
          dropout: null,
        }),
      )
    );
    const y = l.forward();
    const kept = await calls(() => y.backward(l.dy));
    for (const g of l.takeGrads()) g.dispose();
    const yr = tidy(() => l.forward());
    const recomputing = await calls(() => yr.backward(l.dy));
    assert.ok(inner >= 1);
    assert.equal(recomputing - kept, inner, `${kept} dispatches with t kept, ${recomputing} without`);
    for (const t of [y, yr, ...l.takeGrads()]) t.dispose();
    l.dispose();
  },
);
