/** AdamW's default learning rate is torch.optim.AdamW's (1e-3), and only an absent lr takes it. */
import assert from "node:assert/strict";
import { AdamW, ConfigError, tensor } from "../../mod.ts";

Deno.test("new AdamW(params) without options uses lr 1e-3 and steps exactly as an explicit lr 1e-3", async () => {
  const p0 = [0.5, -1.25, 3];
  const g = [0.1, -0.2, 0.3];
  const a = tensor(p0, [3], { requiresGrad: true });
  const b = tensor(p0, [3], { requiresGrad: true });
  const implicit = new AdamW([a]);
  const explicit = new AdamW([b], { lr: 1e-3 });
  assert.equal(implicit.lr, 1e-3);
  for (let step = 0; step < 2; step++) {
    a.grad = tensor(g, [3]);
    b.grad = tensor(g, [3]);
    implicit.step();
    explicit.step();
  }
  const after = Array.from(await a.data());
  assert.deepEqual(after, Array.from(await b.data()));
  assert.notDeepEqual(after, p0.map(Math.fround)); // it did move
});

Deno.test("AdamW with other options but no lr still defaults lr to 1e-3", () => {
  const opt = new AdamW([tensor([1], [1], { requiresGrad: true })], { weightDecay: 0 });
  assert.equal(opt.lr, 1e-3);
  assert.equal(opt.weightDecay, 0);
});

Deno.test("AdamW lr: null or NaN is still a ConfigError (only a missing lr is defaulted)", () => {
  const p = tensor([1], [1], { requiresGrad: true });
  // deno-lint-ignore no-explicit-any
  assert.throws(() => new AdamW([p], { lr: null as any }), ConfigError);
  assert.throws(() => new AdamW([p], { lr: NaN }), ConfigError);
});
