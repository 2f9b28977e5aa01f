/** The training loop: equal to a hand-written loop, progress reports, checkpoint and exact resume. */
import assert from "node:assert/strict";
import {
  AdamW,
  applyLoraToLinearModules,
  clipGradNorm,
  ConfigError,
  FormatError,
  type LlamaForCausalLM,
  loadAdapter,
  manualSeed,
  PeftConfig,
  train,
  type TrainProgress,
  WarmupCosineSchedule,
} from "../../mod.ts";
import { tinyModel, tokenRows, withTempDir } from "../models/tiny_model.ts";

/** A tiny model with fresh LoRA adapters, the same every call (lora_A's init draws from the global seed). */
function loraModel(): LlamaForCausalLM {
  const model = tinyModel({}, 11);
  manualSeed(2024);
  applyLoraToLinearModules(
    model,
    new PeftConfig({ targetModules: ["*.q_proj", "*.v_proj", "*.down_proj"], dim: 4, alpha: 8 }),
  );
  return model;
}

const BATCHES = [
  { inputIds: tokenRows(2, 8, 64, 1) },
  { inputIds: tokenRows(2, 8, 64, 2), attentionMask: [Array(8).fill(1), [1, 1, 1, 1, 1, 1, 0, 0]] },
  { inputIds: tokenRows(2, 8, 64, 3) },
];

async function weights(model: LlamaForCausalLM): Promise<number[][]> {
  return await Promise.all(model.trainableParameters().map(async (p) => Array.from(await p.data())));
}

Deno.test("train equals the hand-written loop: same losses and same final weights, bit for bit", async () => {
  const a = loraModel(), b = loraModel();
  const optA = new AdamW(a.trainableParameters(), { lr: 5e-3 });
  const result = await train({
    model: a,
    optimizer: optA,
    batches: BATCHES,
    steps: 5,
    logEvery: 2,
    clipNorm: 1,
  });
  const optB = new AdamW(b.trainableParameters(), { lr: 5e-3 });
  const losses: number[] = [];
  for (let s = 0; s < 5; s++) {
    const batch = BATCHES[s % 3];
    const mask = batch.attentionMask;
    const labels = batch.inputIds.map((r, i) => r.map((t, j) => (mask && mask[i][j] === 0 ? -100 : t)));
    const { loss } = b.forward(batch.inputIds, { labels, attentionMask: mask });
    losses.push(await loss!.item());
    loss!.backward();
    clipGradNorm(optB.params, 1);
    optB.step();
    optB.zeroGrad();
  }
  assert.deepEqual(result.losses, losses);
  assert.equal(result.step, 5);
  assert.deepEqual(await weights(a), await weights(b));
  assert.ok(losses[4] < losses[0] || losses[3] < losses[0], `training lowers the loss: ${losses}`);
});

Deno.test("train reports progress every logEvery steps and after the last, with one read per report", async () => {
  const model = loraModel().eval();
  const reports: TrainProgress[] = [];
  const opt = new AdamW(model.trainableParameters(), { lr: 1e-3 });
  const sched = new WarmupCosineSchedule(opt, { warmupSteps: 2, totalSteps: 7 });
  const result = await train({
    model,
    optimizer: opt,
    batches: (s) => BATCHES[(s * 2) % 3],
    steps: 7,
    logEvery: 3,
    scheduler: sched,
    onProgress: (p) => reports.push(p),
  });
  assert.deepEqual(reports.map((r) => r.step), [3, 6, 7]);
  assert.deepEqual(reports.flatMap((r) => r.losses), result.losses);
  for (const r of reports) {
    assert.equal(r.totalSteps, 7);
    assert.ok(Math.abs(r.loss - r.losses.reduce((x, y) => x + y) / r.losses.length) < 1e-12);
    assert.ok(r.tokensPerSecond > 0 && r.elapsedSeconds > 0);
  }
  assert.equal(reports[2].etaSeconds, 0);
  assert.ok(Math.abs(reports[0].lr - sched.lrAt(3)) < 1e-15, "lr after three scheduler steps");
  assert.equal(opt.lr, sched.lrAt(7));
  assert.equal(model.training, false, "train restores the caller's mode");
});

Deno.test("checkpoint and resume: 3 steps + resume for 3 equals 6 uninterrupted steps exactly", async () => {
  const uninterrupted = loraModel();
  const optU = new AdamW(uninterrupted.trainableParameters(), { lr: 1e-2 });
  const schedU = new WarmupCosineSchedule(optU, { warmupSteps: 2, totalSteps: 6 });
  const full = await train({
    model: uninterrupted,
    optimizer: optU,
    batches: BATCHES,
    steps: 6,
    scheduler: schedU,
    clipNorm: 0.5,
  });

  await withTempDir(async (dir) => {
    const first = loraModel();
    const opt1 = new AdamW(first.trainableParameters(), { lr: 1e-2 });
    const sched1 = new WarmupCosineSchedule(opt1, { warmupSteps: 2, totalSteps: 6 });
    await train({
      model: first,
      optimizer: opt1,
      batches: BATCHES,
      steps: 3,
      scheduler: sched1,
      clipNorm: 0.5,
      checkpointDir: dir,
    });

    // A fresh process would rebuild the model and adapters (their random init is overwritten on resume).
    const second = tinyModel({}, 11);
    manualSeed(99); // another adapter init: resuming must overwrite it
    applyLoraToLinearModules(
      second,
      new PeftConfig({ targetModules: ["*.q_proj", "*.v_proj", "*.down_proj"], dim: 4, alpha: 8 }),
    );
    const opt2 = new AdamW(second.trainableParameters(), { lr: 1e-2 });
    const sched2 = new WarmupCosineSchedule(opt2, { warmupSteps: 2, totalSteps: 6 });
    const resumed = await train({
      model: second,
      optimizer: opt2,
      batches: BATCHES,
      steps: 6,
      scheduler: sched2,
      clipNorm: 0.5,
      resumeFrom: dir,
    });
    assert.deepEqual(resumed.losses, full.losses);
    assert.deepEqual(await weights(second), await weights(uninterrupted));

    // The checkpoint directory is a PEFT adapter: loading it onto a fresh base gives the same outputs.
    const fresh = tinyModel({}, 11);
    await loadAdapter(fresh, dir);
    const ids = tokenRows(1, 6);
    assert.deepEqual(await fresh.forward(ids).logits.data(), await first.forward(ids).logits.data());
  });
});

Deno.test("train errors: bad steps, empty batches, missing checkpoint", async () => {
  const model = loraModel();
  const opt = new AdamW(model.trainableParameters(), { lr: 1e-3 });
  await assert.rejects(() => train({ model, optimizer: opt, batches: BATCHES, steps: -1 }), /steps/);
  await assert.rejects(() => train({ model, optimizer: opt, batches: [], steps: 1 }), /batches/);
  await assert.rejects(
    () => train({ model, optimizer: opt, batches: BATCHES, steps: 1, logEvery: 0 }),
    /logEvery/,
  );
  await withTempDir(async (dir) => {
    await assert.rejects(
      () => train({ model, optimizer: opt, batches: BATCHES, steps: 1, resumeFrom: dir }),
      FormatError,
    );
    // A checkpoint directory that is not there is a bad path (ConfigError), not a bad checkpoint.
    await assert.rejects(
      () => train({ model, optimizer: opt, batches: BATCHES, steps: 1, resumeFrom: `${dir}/nowhere` }),
      (e) =>
        e instanceof ConfigError &&
        /^train \(resumeFrom\): loadCheckpoint: .*nowhere does not exist$/.test(e.message),
    );
  });
});
