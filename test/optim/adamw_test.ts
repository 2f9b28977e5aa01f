/** AdamW against torch.optim.AdamW's arithmetic computed by hand, state round trips and option errors. */
import assert from "node:assert/strict";
import { AdamW, ConfigError, tensor } from "../../mod.ts";

const f = Math.fround;

/** torch's single-tensor AdamW update of one element, every op rounded to float32 as torch does. */
function torchStep(
  s: { p: number; m: number; v: number },
  g: number,
  t: number,
  o: { lr: number; b1: number; b2: number; eps: number; wd: number },
): void {
  const decayed = f(s.p * f(1 - o.lr * o.wd));
  s.m = f(s.m + f(f(g - s.m) * f(1 - o.b1)));
  s.v = f(f(s.v * f(o.b2)) + f(f(g * f(1 - o.b2)) * g));
  const bias1 = 1 - o.b1 ** t, bias2Sqrt = Math.sqrt(1 - o.b2 ** t);
  const denom = f(f(f(Math.sqrt(s.v)) / f(bias2Sqrt)) + f(o.eps));
  s.p = f(decayed + f(f(s.m * f(-o.lr / bias1)) / denom));
}

Deno.test("AdamW reproduces torch's update bit for bit over three steps (weight decay, bias corrections)", async () => {
  const p0 = [0.5, -1.25, 3, 1e-3, -0.75, 2];
  const grads = [[0.1, -0.2, 0.3, 1e-9, 0, -4], [0.05, 0.2, -0.1, 2e-9, 1e-3, -3], [-0.3, 0.1, 0.2, 0, 5, 1]];
  const o = { lr: 1e-2, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.01 };
  const p = tensor(p0, [2, 3], { requiresGrad: true });
  const opt = new AdamW([p], { lr: o.lr, betas: [o.b1, o.b2], eps: o.eps, weightDecay: o.wd });
  const ref = p0.map((v) => ({ p: f(v), m: 0, v: 0 }));
  for (let t = 1; t <= 3; t++) {
    p.grad = tensor(grads[t - 1], [2, 3]);
    opt.step();
    ref.forEach((s, i) => torchStep(s, f(grads[t - 1][i]), t, o));
    assert.deepEqual(Array.from(await p.data()), ref.map((s) => s.p), `step ${t}`);
  }
  assert.deepEqual(Array.from(await opt.state[0]!.expAvgSq.data()), ref.map((s) => s.v));
  assert.equal(opt.state[0]!.step, 3);
});

Deno.test("AdamW without weight decay, and with other betas, still matches the hand computation", async () => {
  const o = { lr: 0.1, b1: 0.8, b2: 0.99, eps: 1e-6, wd: 0 };
  const p = tensor([1, -2], [2], { requiresGrad: true });
  const opt = new AdamW([p], { lr: o.lr, betas: [o.b1, o.b2], eps: o.eps, weightDecay: 0 });
  const ref = [{ p: 1, m: 0, v: 0 }, { p: -2, m: 0, v: 0 }];
  for (let t = 1; t <= 2; t++) {
    p.grad = tensor([0.5 * t, -0.25], [2]);
    opt.step();
    ref.forEach((s, i) => torchStep(s, [0.5 * t, -0.25][i], t, o));
  }
  assert.deepEqual(Array.from(await p.data()), ref.map((s) => s.p));
});

Deno.test("AdamW skips parameters without a gradient (no state, no decay) and keeps tensor identity", async () => {
  const a = tensor([1, 2], [2], { requiresGrad: true }), b = tensor([3, 4], [2], { requiresGrad: true });
  const opt = new AdamW([a, b], { lr: 0.1 });
  a.grad = tensor([1, 1], [2]);
  opt.step();
  assert.deepEqual(Array.from(await b.data()), [3, 4]);
  assert.equal(opt.state[1], null);
  assert.equal(opt.state[0]!.step, 1);
  assert.equal(opt.params[0], a);
  opt.zeroGrad();
  assert.equal(a.grad, null);
});

Deno.test("AdamW stateDict / loadStateDict: a restored optimizer continues exactly like the original", async () => {
  const grads = [[0.3, -0.1, 0.2], [0.1, 0.4, -0.5], [-0.2, 0.2, 0.1], [0.6, -0.3, 0.05]];
  const run = (p: ReturnType<typeof tensor>, opt: AdamW, from: number, to: number) => {
    for (let t = from; t < to; t++) {
      p.grad = tensor(grads[t], [3]);
      opt.step();
    }
  };
  const p1 = tensor([1, 2, 3], [3], { requiresGrad: true });
  const o1 = new AdamW([p1], { lr: 0.05, weightDecay: 0.1 });
  run(p1, o1, 0, 2);
  const sd = o1.stateDict();
  const saved = {
    state: {
      0: {
        step: sd.state[0].step,
        exp_avg: { shape: [3], data: await sd.state[0].exp_avg.data() },
        exp_avg_sq: { shape: [3], data: await sd.state[0].exp_avg_sq.data() },
      },
    },
    param_groups: sd.param_groups,
  };
  const p2 = tensor(await p1.data(), [3], { requiresGrad: true });
  const o2 = new AdamW([p2], { lr: 1, weightDecay: 0 });
  o2.loadStateDict(saved);
  assert.equal(o2.lr, 0.05);
  assert.equal(o2.weightDecay, 0.1);
  run(p1, o1, 2, 4);
  run(p2, o2, 2, 4);
  assert.deepEqual(await p2.data(), await p1.data());
});

Deno.test("AdamW option and state errors are ConfigErrors naming the option", () => {
  const p = tensor([1], [1], { requiresGrad: true });
  assert.throws(() => new AdamW([], { lr: 1 }), /empty parameter list/);
  assert.throws(() => new AdamW([p, p], { lr: 1 }), /more than once/);
  assert.throws(
    () => new AdamW([p], { lr: -1 }),
    (e: unknown) => e instanceof ConfigError && /lr/.test(e.message),
  );
  assert.throws(() => new AdamW([p], { lr: 1, betas: [0.9, 1] }), /betas/);
  assert.throws(() => new AdamW([p], { lr: 1, eps: -1 }), /eps/);
  assert.throws(() => new AdamW([p], { lr: 1, weightDecay: -0.1 }), /weightDecay/);
  const opt = new AdamW([p], { lr: 1 });
  const group = { lr: 1, betas: [0.9, 0.999] as [number, number], eps: 1e-8, weight_decay: 0 };
  assert.throws(
    () =>
      opt.loadStateDict({
        state: { 3: { step: 1, exp_avg: { shape: [1], data: [0] }, exp_avg_sq: { shape: [1], data: [0] } } },
        param_groups: [group],
      }),
    /parameter 3/,
  );
  assert.throws(
    () =>
      opt.loadStateDict({
        state: {
          0: { step: 1, exp_avg: { shape: [2], data: [0, 0] }, exp_avg_sq: { shape: [1], data: [0] } },
        },
        param_groups: [group],
      }),
    /exp_avg of parameter 0 has shape \[2\]/,
  );
});

Deno.test("AdamW over f32 and f16 parameters together: each dtype its own packed group, same arithmetic as alone", async () => {
  const grads = [[0.1, -0.2, 0.3], [0.5, 0.25], [-1, 2, -3, 4]];
  const make = () => [
    tensor([1, 2, 3], [3], { requiresGrad: true }),
    tensor([0.5, -0.5], [2], { dtype: "f16", requiresGrad: true }),
    tensor([1, -1, 2, -2], [2, 2], { requiresGrad: true }),
  ];
  const together = make();
  const alone = make();
  const opt = new AdamW(together, { lr: 0.01 });
  const opts = alone.map((p) => new AdamW([p], { lr: 0.01 }));
  for (let t = 0; t < 2; t++) {
    together.forEach((p, i) => (p.grad = tensor(grads[i], p.shape, { dtype: p.dtype })));
    alone.forEach((p, i) => (p.grad = tensor(grads[i], p.shape, { dtype: p.dtype })));
    opt.step();
    opts.forEach((o) => o.step());
  }
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(await together[i].data(), await alone[i].data(), `parameter ${i}`);
  }
  assert.equal(opt.state[1]!.expAvg.dtype, "f32", "f16 parameters keep f32 moments");
});

Deno.test("AdamW.step refuses a gradient of another dtype before updating anything", async () => {
  const a = tensor([1, 2], [2], { requiresGrad: true }), b = tensor([3], [1], { requiresGrad: true });
  const opt = new AdamW([a, b], { lr: 0.1 });
  a.grad = tensor([1, 1], [2]);
  b.grad = tensor([1], [1], { dtype: "f16" });
  assert.throws(() => opt.step(), /gradient of parameter 1 is f16/);
  assert.deepEqual(Array.from(await a.data()), [1, 2], "nothing was updated");
  assert.equal(opt.state[0], null);
});

Deno.test("AdamW on f16 parameters: stateDict holds f32 moments and a restored optimizer continues identically", async () => {
  const p1 = tensor([0.5, -1, 2], [3], { dtype: "f16", requiresGrad: true });
  const o1 = new AdamW([p1], { lr: 0.05 });
  const step = (p: ReturnType<typeof tensor>, o: AdamW, g: number[]) => {
    p.grad = tensor(g, [3], { dtype: "f16" });
    o.step();
  };
  step(p1, o1, [1e-7, 0.5, -0.25]);
  const sd = o1.stateDict();
  assert.equal(sd.state[0].exp_avg_sq.dtype, "f32");
  const p2 = tensor(await p1.data(), [3], { dtype: "f16", requiresGrad: true });
  const o2 = new AdamW([p2], { lr: 1 });
  o2.loadStateDict(sd);
  step(p1, o1, [0.1, 0.2, 0.3]);
  step(p2, o2, [0.1, 0.2, 0.3]);
  assert.deepEqual(await p2.data(), await p1.data());
  assert.ok((await p1.data()).every(Number.isFinite));
});
