/** Memory scopes: tidy / keep, backward freeing its temporaries, disposeGraph. */
import assert from "node:assert/strict";
import {
  AutogradError,
  ConfigError,
  cpuDevice,
  crossEntropy,
  disposeGraph,
  keep,
  Linear,
  patchLinearModule,
  randn,
  softmax,
  sub,
  tensor,
  tidy,
} from "../../mod.ts";

const live = () => cpuDevice().memory().buffers;

Deno.test("tidy frees what the function made except its result and kept tensors", () => {
  const x = randn([4, 4], { seed: 1 });
  const before = live();
  let kept = null as ReturnType<typeof randn> | null;
  const result = tidy(() => {
    const a = softmax(x.mul(2).add(1));
    kept = keep(randn([2], { seed: 2 }));
    return { a, list: [a.sum()] };
  });
  assert.equal(live(), before + 3, "result a, its sum and the kept tensor survive");
  assert.ok(!result.a.isDisposed && !kept!.isDisposed);
  result.a.dispose();
  result.list[0].dispose();
  kept!.dispose();
  assert.equal(live(), before);
});

Deno.test("tidy scopes nest: an inner result belongs to the outer scope", () => {
  const before = live();
  const out = tidy(() => {
    const inner = tidy(() => randn([3], { seed: 3 }).mul(2));
    assert.ok(!inner.isDisposed);
    return inner.add(1);
  });
  assert.equal(live(), before + 1);
  out.dispose();
  assert.equal(live(), before);
});

Deno.test("backward frees its temporaries: only leaf gradients remain", () => {
  const w = randn([5, 3], { seed: 4, requiresGrad: true });
  const x = randn([7, 5], { seed: 5 });
  const y = softmax(x.matmul(w)).sum();
  const before = live();
  y.backward();
  assert.equal(live(), before + 1, "exactly one new buffer: w.grad");
  assert.deepEqual(w.grad!.shape, [5, 3]);
});

Deno.test("gradients accumulate in place: the .grad object keeps its identity", async () => {
  const w = tensor([1, 2, 3], [3], { requiresGrad: true });
  w.mul(w).sum().backward();
  const g = w.grad!;
  w.mul(w).sum().backward();
  assert.equal(w.grad, g);
  assert.deepEqual(Array.from(await g.data()), [4, 8, 12]);
});

Deno.test("a gradient shared by two leaves is not aliased", async () => {
  const a = tensor([1, 2], [2], { requiresGrad: true });
  const b = tensor([3, 4], [2], { requiresGrad: true });
  a.add(b).sum().backward();
  assert.notEqual(a.grad, b.grad);
  a.mul(3).sum().backward();
  assert.deepEqual(Array.from(await a.grad!.data()), [4, 4]);
  assert.deepEqual(Array.from(await b.grad!.data()), [1, 1]);
});

Deno.test("a LoRA training loop under tidy + disposeGraph keeps live buffers flat", () => {
  const layer = patchLinearModule(new Linear(12, 6, { seed: 6 }), { dim: 2, seed: 7 });
  const params = [layer.lora_A.weight, layer.lora_B.weight];
  const counts: number[] = [];
  for (let step = 0; step < 30; step++) {
    tidy(() => {
      const x = randn([9, 12], { seed: step });
      const loss = crossEntropy(layer.forward(x), [0, 1, 2, 3, 4, 5, 0, 1, 2]);
      loss.backward();
      for (const p of params) {
        p._assign(sub(p, p.grad!.scale(0.1)));
        p.grad!.dispose();
        p.grad = null;
      }
      disposeGraph(loss);
    });
    counts.push(live());
  }
  assert.equal(new Set(counts.slice(1)).size, 1, `live buffers drifted: ${counts.join(", ")}`);
});

Deno.test("graph misuse is an AutogradError (a ConfigError): async tidy bodies, requiresGrad_ on non-leaves", () => {
  assert.throws(
    () => tidy(() => Promise.resolve(1)),
    (e: unknown) => e instanceof AutogradError && /tidy/.test(e.message),
  );
  const x = tensor([1, 2], [2], { requiresGrad: true });
  const y = x.mul(2);
  assert.throws(
    () => y.requiresGrad_(false),
    (e: unknown) => e instanceof AutogradError && e instanceof ConfigError,
  );
  assert.throws(() => tensor([1]).backward(), AutogradError);
});
