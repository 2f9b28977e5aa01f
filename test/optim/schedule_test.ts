/** The warmup + cosine learning-rate schedule (transformers' get_cosine_schedule_with_warmup). */
import assert from "node:assert/strict";
import { ConfigError, warmupCosineFactor, WarmupCosineSchedule } from "../../mod.ts";

const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} vs ${b}`);

Deno.test("warmupCosineFactor: linear warmup, half-cosine decay, floor and clamping after the end", () => {
  const o = { warmupSteps: 4, totalSteps: 14 };
  close(warmupCosineFactor(0, o), 0);
  close(warmupCosineFactor(2, o), 0.5);
  close(warmupCosineFactor(4, o), 1);
  close(warmupCosineFactor(9, o), 0.5);
  close(warmupCosineFactor(14, o), 0);
  close(warmupCosineFactor(20, o), 0);
  close(warmupCosineFactor(6, o), 0.5 * (1 + Math.cos(Math.PI * 0.2)));
  close(warmupCosineFactor(14, { ...o, minRatio: 0.1 }), 0.1);
  close(warmupCosineFactor(9, { ...o, minRatio: 0.1 }), 0.55);
  close(warmupCosineFactor(0, { warmupSteps: 0, totalSteps: 10 }), 1);
});

Deno.test("WarmupCosineSchedule drives the optimizer's lr and restores its position", () => {
  const opt = { lr: 0.2 };
  const s = new WarmupCosineSchedule(opt, { warmupSteps: 2, totalSteps: 6 });
  const seen = [opt.lr];
  for (let i = 0; i < 6; i++) {
    s.step();
    seen.push(opt.lr);
  }
  [
    0,
    0.1,
    0.2,
    0.2 * 0.5 * (1 + Math.cos(Math.PI / 4)),
    0.1,
    0.2 * 0.5 * (1 + Math.cos((3 * Math.PI) / 4)),
    0,
  ]
    .forEach((v, i) => close(seen[i], v));
  const opt2 = { lr: 0.2 };
  const s2 = new WarmupCosineSchedule(opt2, { warmupSteps: 2, totalSteps: 6 });
  s2.loadStateDict(JSON.parse(JSON.stringify({ ...s.stateDict(), lastStep: 3 })));
  close(opt2.lr, seen[3]);
  assert.throws(() => s2.loadStateDict({ lastStep: 1, baseLr: 0.5 }), /base rate/);
});

Deno.test("schedule options are checked", () => {
  assert.throws(() => warmupCosineFactor(0, { warmupSteps: -1, totalSteps: 5 }), ConfigError);
  assert.throws(() => warmupCosineFactor(0, { warmupSteps: 5, totalSteps: 5 }), /totalSteps/);
  assert.throws(
    () => new WarmupCosineSchedule({ lr: 1 }, { warmupSteps: 0, totalSteps: 3, minRatio: 2 }),
    /minRatio/,
  );
});
