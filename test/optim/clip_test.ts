/** clipGradNorm: torch's global-norm clipping, in place and on the device. */
import assert from "node:assert/strict";
import { clipGradNorm, ConfigError, tensor } from "../../mod.ts";

function params(grads: number[][]) {
  return grads.map((g) => {
    const p = tensor(g.map(() => 0), [g.length], { requiresGrad: true });
    p.grad = tensor(g, [g.length]);
    return p;
  });
}

Deno.test("clipGradNorm scales every gradient by maxNorm / (norm + 1e-6) and returns the norm before", async () => {
  const ps = params([[3, 0], [0, 4, 0]]); // norm 5
  const before = ps.map((p) => p.grad);
  const total = clipGradNorm(ps, 1)!;
  assert.ok(Math.abs((await total.item()) - 5) < 1e-6);
  const coef = 1 / (5 + 1e-6);
  assert.ok(Math.abs((await ps[0].grad!.data())[0] - 3 * coef) < 1e-7);
  assert.ok(Math.abs((await ps[1].grad!.data())[1] - 4 * coef) < 1e-7);
  assert.equal(ps[0].grad, before[0], "gradients change in place, same tensor objects");
});

Deno.test("clipGradNorm leaves gradients under the limit unchanged", async () => {
  const ps = params([[0.3, 0.4]]);
  const total = clipGradNorm(ps, 1)!;
  assert.ok(Math.abs((await total.item()) - 0.5) < 1e-7);
  assert.deepEqual(Array.from(await ps[0].grad!.data()), [Math.fround(0.3), Math.fround(0.4)]);
});

Deno.test("clipGradNorm skips parameters without gradients; none at all gives null", async () => {
  const [a] = params([[6, 8]]);
  const b = tensor([1, 2], [2], { requiresGrad: true });
  assert.ok(Math.abs((await clipGradNorm([a, b], 5)!.item()) - 10) < 1e-5);
  assert.equal(b.grad, null);
  assert.equal(clipGradNorm([b], 1), null);
  assert.throws(() => clipGradNorm([a], 0), ConfigError);
});

Deno.test("clipGradNorm over f32 and f16 gradients takes one joint norm and scales both", async () => {
  const a = tensor([0, 0], [2], { requiresGrad: true });
  a.grad = tensor([3, 0], [2]);
  const b = tensor([0, 0, 0], [3], { dtype: "f16", requiresGrad: true });
  b.grad = tensor([0, 4, 0], [3], { dtype: "f16" });
  const total = clipGradNorm([a, b], 1)!;
  assert.equal(total.dtype, "f32");
  assert.ok(Math.abs((await total.item()) - 5) < 1e-6);
  assert.ok(Math.abs((await a.grad!.data())[0] - 0.6) < 1e-6);
  assert.ok(Math.abs((await b.grad!.data())[1] - 0.8) < 1e-3);
  assert.equal(b.grad!.dtype, "f16");
});
