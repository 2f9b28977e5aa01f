/**
 * Autograd semantics, PyTorch's: gradients of a tensor used by several ops are summed, `.grad`
 * accumulates across backward calls until set to null, `noGrad` stops recording (sync and async),
 * `backward(grad)` for non-scalars, `requiresGrad` propagation and `detach`.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  add,
  cos,
  cpuDevice,
  detach,
  LoraError,
  mul,
  noGrad,
  scale,
  ShapeError,
  sin,
  sum,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { isGradEnabled } from "../../src/tensor/mod.ts";
import { relErr } from "../helpers.ts";

const F64 = { device: cpuDevice(), dtype: "f64" as const };
const leaf = (v: number[], shape = [v.length]) => tensor(v, shape, { ...F64, requiresGrad: true });
const valuesOf = (t: Tensor | null) => {
  assert.ok(t !== null, "expected a gradient");
  return [...t.dataSync()];
};
const valuesArb = fc.array(fc.double({ min: -3, max: 3, noNaN: true }), { minLength: 1, maxLength: 6 });

Deno.test("a tensor used by several ops receives the sum of their gradients", () => {
  fc.assert(
    fc.property(valuesArb, (v) => {
      const x = leaf(v);
      // L = Σ x·x + sin x + 3x, so dL/dx = 2x + cos x + 3 (x feeds four uses).
      const loss = sum(add(add(mul(x, x), sin(x)), scale(x, 3)));
      loss.backward();
      const expected = v.map((a) => 2 * a + Math.cos(a) + 3);
      assert.ok(relErr(valuesOf(x.grad), expected) < 1e-12);
    }),
    { numRuns: 30 },
  );
});

Deno.test("an intermediate used twice (diamond) passes both gradients back", () => {
  const x = leaf([1.5, -2]);
  const a = scale(x, 2);
  const loss = sum(mul(add(a, a), cos(a))); // 2a·cos a, d/dx = 2·(2cos a − 2a sin a)
  loss.backward();
  const expected = [1.5, -2].map((v) => 2 * (2 * Math.cos(2 * v) - 2 * (2 * v) * Math.sin(2 * v)));
  assert.ok(relErr(valuesOf(x.grad), expected) < 1e-12);
  assert.equal(a.grad, null, "non-leaf tensors keep no .grad, as in PyTorch");
});

Deno.test(".grad accumulates across two backward calls and restarts after being set to null", () => {
  const x = leaf([0.5, 2, -1]);
  const run = () => sum(mul(x, x)).backward();
  run();
  assert.deepEqual(valuesOf(x.grad), [1, 4, -2]);
  const first = x.grad;
  run();
  assert.deepEqual(valuesOf(x.grad), [2, 8, -4]);
  assert.equal(x.grad, first, "accumulation is in place: the .grad object a caller holds stays current");
  x.grad = null;
  run();
  assert.deepEqual(valuesOf(x.grad), [1, 4, -2]);
});

Deno.test("backward(grad) on a non-scalar propagates the given gradient", () => {
  fc.assert(
    fc.property(valuesArb, fc.double({ min: -4, max: 4, noNaN: true }), (v, s) => {
      const x = leaf(v, [1, v.length]);
      const y = scale(x, s);
      const g = v.map((_, i) => i - 1.5);
      y.backward(tensor(g, [1, v.length], F64));
      assert.deepEqual(valuesOf(x.grad), g.map((gi) => gi * s));
    }),
    { numRuns: 20 },
  );
});

Deno.test("backward of a non-scalar without a gradient is a ShapeError naming the shape", () => {
  const y = scale(leaf([1, 2, 3, 4], [2, 2]), 2);
  assert.throws(
    () => y.backward(),
    (e: Error) => e instanceof ShapeError && /backward/.test(e.message) && /2,2/.test(e.message),
  );
});

Deno.test("backward with a gradient of the wrong shape is a ShapeError naming both shapes", () => {
  const y = scale(leaf([1, 2, 3, 4], [2, 2]), 2);
  assert.throws(
    () => y.backward(tensor([1, 1, 1, 1], [4], F64)),
    (e: Error) => e instanceof ShapeError && /\[4\]/.test(e.message) && /\[2,2\]/.test(e.message),
  );
});

Deno.test("backward on a tensor that does not require grad is an error", () => {
  const y = sum(tensor([1, 2], [2], F64));
  assert.equal(y.requiresGrad, false);
  assert.throws(() => y.backward(), (e: Error) => e instanceof LoraError && /backward/.test(e.message));
});

Deno.test("a scalar's backward() seeds with one, on 0-d and one-element tensors", () => {
  const x = leaf([3]);
  sum(mul(x, x)).backward(); // 0-d
  assert.deepEqual(valuesOf(x.grad), [6]);
  x.grad = null;
  mul(x, x).backward(); // shape [1]
  assert.deepEqual(valuesOf(x.grad), [6]);
});

Deno.test("requiresGrad propagates from any input and only leaves that require grad get .grad", () => {
  const a = leaf([1, 2]);
  const c = tensor([3, 4], [2], F64);
  assert.ok(a.isLeaf && c.isLeaf);
  assert.equal(mul(c, c).requiresGrad, false);
  const y = mul(a, c);
  assert.ok(y.requiresGrad);
  assert.equal(y.isLeaf, false);
  sum(y).backward();
  assert.deepEqual(valuesOf(a.grad), [3, 4]);
  assert.equal(c.grad, null);
});

Deno.test("requiresGrad_ toggles leaves and refuses non-leaves", () => {
  const a = tensor([1], [1], F64).requiresGrad_();
  assert.ok(a.requiresGrad);
  const y = scale(a, 2);
  assert.throws(() => y.requiresGrad_(false), LoraError);
  a.requiresGrad_(false);
  assert.equal(scale(a, 2).requiresGrad, false);
});

Deno.test("leaf gradients are tensors of their own: disposing one leaves the others intact", () => {
  const a = leaf([1, 2]), b = leaf([3, 4]);
  const g = tensor([5, 6], [2], F64);
  add(a, b).backward(g);
  assert.notEqual(a.grad, b.grad, "a and b must not share one gradient tensor");
  assert.notEqual(a.grad, g, "the caller's gradient must not become a .grad");
  g.dispose();
  a.grad!.dispose();
  assert.deepEqual(valuesOf(b.grad), [5, 6]);
  const x = leaf([1, 1]);
  const gx = tensor([7, 8], [2], F64);
  x.backward(gx);
  assert.notEqual(x.grad, gx);
  gx.dispose();
  assert.deepEqual(valuesOf(x.grad), [7, 8]);
});

Deno.test("noGrad with a sync body records nothing and restores grad mode, also after a throw", () => {
  const x = leaf([1, 2]);
  const y = noGrad(() => mul(x, x));
  assert.equal(y.requiresGrad, false);
  assert.ok(y.isLeaf);
  assert.ok(isGradEnabled());
  assert.ok(mul(x, x).requiresGrad);
  assert.throws(() =>
    noGrad(() => {
      throw new Error("boom");
    }), /boom/);
  assert.ok(isGradEnabled());
  const nested = noGrad(() => {
    noGrad(() => 0);
    return mul(x, x); // the inner call must not switch recording back on
  });
  assert.equal(nested.requiresGrad, false);
});

Deno.test("noGrad with an async body keeps recording off across awaits and restores it after", async () => {
  const x = leaf([1, 2]);
  const y = await noGrad(async () => {
    await new Promise((r) => setTimeout(r, 1));
    return mul(x, x);
  });
  assert.equal(y.requiresGrad, false);
  assert.ok(isGradEnabled());
  assert.ok(mul(x, x).requiresGrad);
  await assert.rejects(
    noGrad(async () => {
      await Promise.resolve();
      throw new Error("async boom");
    }),
    /async boom/,
  );
  assert.ok(isGradEnabled());
});

Deno.test("detach copies the values into a leaf through which no gradient flows", () => {
  fc.assert(
    fc.property(valuesArb, (v) => {
      const x = leaf(v);
      const d = detach(x);
      assert.equal(d.requiresGrad, false);
      assert.ok(d.isLeaf);
      assert.deepEqual([...d.dataSync()], v);
      assert.deepEqual([...x.detach().dataSync()], v);
      // L = Σ stop(x)·x: the gradient is x, not 2x.
      sum(mul(d, x)).backward();
      assert.deepEqual(valuesOf(x.grad), v);
      assert.equal(d.grad, null);
    }),
    { numRuns: 20 },
  );
});

Deno.test("a 20 000-op chain back-propagates without overflowing the stack", () => {
  const x = leaf([1]);
  let y: Tensor = x;
  for (let i = 0; i < 20_000; i++) y = add(y, 0.5);
  sum(y).backward();
  assert.deepEqual(valuesOf(x.grad), [1]);
  assert.deepEqual([...y.dataSync()], [10_001]);
});

Deno.test("backward frees each temporary once nothing reads it: its peak does not grow with the graph's depth", () => {
  // A chain of n elementwise ops keeps n saved inputs for backward either way; what backward adds on top
  // must stay a few tensors' worth (the gradient in flight and one node's working set), not n gradients.
  const device = cpuDevice();
  const extraPeak = (n: number) => {
    const x = tensor(Array.from({ length: 1000 }, (_, i) => i / 1000), [1000], {
      device,
      requiresGrad: true,
    });
    let y: Tensor = x;
    for (let i = 0; i < n; i++) y = sin(mul(y, y));
    const loss = sum(y);
    const before = device.memory().bytes;
    device.resetPeakMemory();
    loss.backward();
    const extra = device.memory().peakBytes - before;
    assert.equal(x.grad!.shape.join(), "1000");
    loss.dispose();
    x.grad!.dispose();
    return extra;
  };
  const shallow = extraPeak(4);
  const deep = extraPeak(40);
  assert.ok(deep <= shallow, `backward's extra peak grew with depth: ${shallow} B at 4 ops, ${deep} B at 40`);
  assert.ok(deep <= 8 * 4000, `backward's extra peak ${deep} B is more than 8 tensors of 4000 B`);
});
