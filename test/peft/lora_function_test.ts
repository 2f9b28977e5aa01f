/**
 * `loraLinear` (src/peft/lora_function.ts) keeps t = drop_pre(x)·Aᵀ from its forward for its backward, on
 * the CPU reference and on WebGPU: kept only when the call records a backward; freed by that backward, and
 * by a tidy scope that drops the graph without one; never leaked (live bytes counted per device). The
 * gradients with t kept equal the CPU reference (dropout before and after the adapter), and bit for bit
 * those of a backward that recomputes t; on WebGPU that backward dispatches loraInner's kernels fewer.
 */
import assert from "node:assert/strict";
import {
  cpuDevice,
  type Device,
  loraLinear,
  noGrad,
  profile,
  type Tensor,
  tensor,
  tidy,
  webgpuDevice,
} from "../../mod.ts";
import type { FusedDropout } from "../../src/backend/backend.ts";
import { Rng } from "../../src/core/random.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";
import { relErr, takeValues } from "../helpers.ts";

/** Sizes of the layer the tests run: odd feature counts, a rank above one. */
const M = 9, IN = 13, OUT = 7, RANK = 3;

/** Seeded normal values. */
function normal(n: number, seed: number): number[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => rng.normal());
}

/** The operands on `device` (f32): x, W, bias, A, B and dy; x, A and B require grad unless `frozen`. */
function layer(device: Device, frozen = false) {
  const t = (shape: number[], seed: number, requiresGrad = false) =>
    tensor(normal(shape[0] * (shape[1] ?? 1), seed), shape, {
      device,
      requiresGrad: requiresGrad && !frozen,
    });
  const ops = {
    x: t([M, IN], 1, true),
    w: t([OUT, IN], 2),
    bias: t([OUT], 3),
    a: t([RANK, IN], 4, true),
    b: t([OUT, RANK], 5, true),
    dy: t([M, OUT], 6),
  };
  return {
    ...ops,
    forward: (dropout: FusedDropout | null = null) =>
      loraLinear(ops.x, ops.w, ops.bias, ops.a, ops.b, 2, dropout),
    /** The leaves' gradients, taken off them (the caller disposes them). */
    takeGrads(): Tensor[] {
      const g = [ops.x, ops.a, ops.b].map((l) => l.grad!);
      for (const l of [ops.x, ops.a, ops.b]) l.grad = null;
      return g;
    },
    dispose: () => Object.values(ops).forEach((o) => o.dispose()),
  };
}

/** Bytes of t on `device`: f32 on WebGPU, f64 on the CPU reference (its accumulation type). */
const innerBytes = (device: Device) => M * RANK * (device.kind === "cpu" ? 8 : 4);
const yBytes = M * OUT * 4;
const gradBytes = (M * IN + RANK * IN + OUT * RANK) * 4;

/** The leak checks on one device (its counts must move only with this test's tensors). */
function checkLifetimes(device: Device): void {
  const be = device.backend;
  const live = () => {
    const { buffers, bytes } = be.memory();
    return { buffers, bytes };
  };
  const initial = live();
  const l = layer(device);
  const start = live();
  const at = (buffers: number, bytes: number, what: string) =>
    assert.deepEqual(live(), { buffers: start.buffers + buffers, bytes: start.bytes + bytes }, what);

  // No backward recorded (grad mode off): only the output is made, t goes at once.
  const y0 = noGrad(() => l.forward());
  at(1, yBytes, "noGrad forward");
  y0.dispose();
  at(0, 0, "noGrad forward, output disposed");

  // A backward recorded: the output and t; the backward frees t.
  const y = l.forward({ p: 0.3, seed: 5, position: "pre" });
  at(2, yBytes + innerBytes(device), "forward recording a backward");
  y.backward(l.dy);
  at(4, yBytes + gradBytes, "after backward: t freed, the three gradients made");
  y.dispose();
  for (const g of l.takeGrads()) g.dispose();
  at(0, 0, "forward + backward, all disposed");

  // The graph dropped without a backward: the tidy scope frees t with the output.
  tidy(() => void l.forward({ p: 0.3, seed: 5, position: "post" }));
  at(0, 0, "forward with grad inside tidy, no backward");

  // A training step: forward and backward in one scope, only the leaves' gradients stay.
  tidy(() => l.forward().backward(l.dy));
  at(3, gradBytes, "tidy(forward + backward)");
  for (const g of l.takeGrads()) g.dispose();
  at(0, 0, "tidy(forward + backward), gradients disposed");
  l.dispose();

  // Grad mode on but nothing requires grad: no backward is recorded, nothing is kept.
  const f = layer(device, true);
  const fstart = live();
  const yf = f.forward();
  assert.equal(yf.requiresGrad, false);
  assert.deepEqual(
    be.memory(),
    { buffers: fstart.buffers + 1, bytes: fstart.bytes + yBytes },
    "frozen forward",
  );
  yf.dispose();
  f.dispose();
  assert.deepEqual(live(), initial, "everything disposed");
}

Deno.test("loraLinear on the CPU keeps t only for a backward and frees it with the backward or the scope", () => {
  checkLifetimes(cpuDevice());
});

gpuTest(
  "loraLinear on WebGPU keeps t only for a backward and frees it with the backward or the scope",
  async () => {
    // A device of its own: its counts see only this test's tensors.
    const device = await webgpuDevice();
    try {
      checkLifetimes(device);
    } finally {
      device.destroy();
    }
  },
);

/**
 * The gradients of x, A and B on `device` with dropout `d`, three ways: t kept (the forward's), t
 * recomputed (the output returned from a tidy scope, which freed t with the rest of the forward), and a
 * second backward through the kept graph (t freed by the first, so recomputed) that doubles them.
 */
async function gradsThreeWays(device: Device, d: FusedDropout | null) {
  const l = layer(device);
  const y = l.forward(d);
  const yValues = Float32Array.from(await y.data());
  y.backward(l.dy);
  const kept = await takeValues(l.takeGrads());
  y.backward(l.dy);
  y.backward(l.dy);
  const twice = await takeValues(l.takeGrads());
  y.dispose();
  const yr = tidy(() => l.forward(d));
  yr.backward(l.dy);
  const recomputed = await takeValues(l.takeGrads());
  yr.dispose();
  l.dispose();
  return { yValues, kept, recomputed, twice };
}

const DROPOUTS: [string, FusedDropout | null][] = [
  ["no dropout", null],
  ["dropout pre", { p: 0.3, seed: 11, position: "pre" }],
  ["dropout post", { p: 0.4, seed: 12, position: "post" }],
];

/** Element-wise identity of float arrays, naming the first difference. */
function assertSame(what: string, got: Float32Array, want: Float32Array): void {
  const at = want.findIndex((v, i) => !Object.is(v, got[i]));
  assert.equal(at, -1, `${what}: element ${at} is ${got[at]}, want ${want[at]}`);
}

/** Checks the three ways agree bit for bit (a second backward doubles: the sum of two equal values). */
function checkThreeWays(tag: string, r: Awaited<ReturnType<typeof gradsThreeWays>>): void {
  ["dx", "dA", "dB"].forEach((name, i) => {
    assertSame(`${tag} ${name}, t recomputed`, r.recomputed[i], r.kept[i]);
    assertSame(`${tag} ${name}, two backwards`, r.twice[i], r.kept[i].map((v) => 2 * v));
  });
}

for (const [name, d] of DROPOUTS) {
  Deno.test(`loraLinear on the CPU (${name}): gradients with t kept equal those with t recomputed`, async () => {
    checkThreeWays(`cpu ${name}`, await gradsThreeWays(cpuDevice(), d));
  });

  gpuTest(
    `loraLinear on WebGPU (${name}): gradients with t kept equal the CPU's and the recomputed ones`,
    async (gpu) => {
      const g = await gradsThreeWays(gpu, d), c = await gradsThreeWays(cpuDevice(), d);
      checkThreeWays(`webgpu ${name}`, g);
      assert.ok(relErr(g.yValues, c.yValues) < 1e-5, `y: ${relErr(g.yValues, c.yValues)}`);
      ["dx", "dA", "dB"].forEach((n, i) => {
        const err = relErr(g.kept[i], c.kept[i]);
        assert.ok(err < 1e-5, `${n}: relative error ${err} against the CPU`);
      });
    },
  );
}

gpuTest(
  "loraLinear's backward on WebGPU dispatches loraInner's kernels fewer than one recomputing t",
  async (gpu) => {
    for (const [name, d] of DROPOUTS) {
      const l = layer(gpu);
      const calls = async (fn: () => void) =>
        (await profile(fn, { device: gpu })).rows.reduce((s, r) => s + r.calls, 0);
      const inner = await calls(() => {
        const t = gpu.backend.loraInner({
          x: l.x.storage(),
          a: l.a.storage(),
          m: M,
          inFeatures: IN,
          rank: RANK,
          dropout: d,
        });
        gpu.backend.free(t);
      });
      const y = l.forward(d);
      const kept = await calls(() => y.backward(l.dy));
      // Gradients taken off the leaves: the next backward makes them afresh instead of adding to them.
      for (const g of l.takeGrads()) g.dispose();
      // Returned from a tidy scope, the output's t went with the scope: its backward recomputes t.
      const yr = tidy(() => l.forward(d));
      const recomputing = await calls(() => yr.backward(l.dy));
      assert.ok(inner >= 1);
      assert.equal(
        recomputing - kept,
        inner,
        `${name}: ${kept} dispatches with t kept, ${recomputing} without`,
      );
      for (const t of [y, yr, ...l.takeGrads()]) t.dispose();
      l.dispose();
    }
  },
);
