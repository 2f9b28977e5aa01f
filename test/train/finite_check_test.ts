/** The training loop's opt-in finite check: a step with a NaN loss or gradient is skipped and reported. */
import assert from "node:assert/strict";
import { AdamW, ConfigError, Module, mul, ShapeError, sum, type Tensor, tensor, train } from "../../mod.ts";

/** A one-parameter "model" whose loss is sum(w²) times the batch's first token (NaN when it is 0). */
class Toy extends Module {
  w: Tensor = tensor([1, -2, 3], [3], { requiresGrad: true });
  override forward(inputIds: number[][]) {
    const factor = inputIds[0][0] === 0 ? NaN : inputIds[0][0];
    return { loss: mul(sum(mul(this.w, this.w)), factor) };
  }
}

const batches = [{ inputIds: [[1]] }, { inputIds: [[0]] }, { inputIds: [[2]] }, { inputIds: [[1]] }];

Deno.test("train with skipNonFinite skips the update of a NaN step, reports it, and keeps training", async () => {
  const model = new Toy();
  const optimizer = new AdamW([model.w], { lr: 0.1 });
  const reports: number[][] = [];
  const result = await train({
    model,
    optimizer,
    batches,
    steps: 4,
    logEvery: 2,
    skipNonFinite: true,
    onProgress: (p) => reports.push(p.skippedSteps),
  });
  assert.deepEqual(result.skippedSteps, [2]);
  assert.deepEqual(reports.at(-1), [2]);
  assert.ok(Number.isNaN(result.losses[1]), "the skipped step's loss is still recorded");
  const w = Array.from(await model.w.data());
  assert.ok(w.every(Number.isFinite), `weights stayed finite: ${w}`);
  assert.ok(Math.abs(w[0]) < 1, "the three finite steps moved the weights towards 0");
});

Deno.test("train without skipNonFinite stops at the first non-finite loss with a ConfigError naming its step", async () => {
  const model = new Toy();
  const optimizer = new AdamW([model.w], { lr: 0.1 });
  // Losses are read back every 4 steps; the error still names step 2, where the NaN first appeared.
  await assert.rejects(
    train({ model, optimizer, batches, steps: 8, logEvery: 4 }),
    (e: unknown) =>
      e instanceof ConfigError && /^train: the loss at step 2 is NaN; training stopped/.test(e.message) &&
      /skipNonFinite/.test(e.message),
  );
});

Deno.test("train stops before reporting (or checkpointing) the diverged steps", async () => {
  {
    const model = new Toy();
    const optimizer = new AdamW([model.w], { lr: 0.1 });
    const reports: number[] = [];
    await assert.rejects(
      train({ model, optimizer, batches, steps: 4, logEvery: 1, onProgress: (p) => reports.push(p.step) }),
      /the loss at step 2 is NaN/,
    );
    assert.deepEqual(reports, [1], "no report for step 2, and checkpoints are written at reports only");
  }
});

/** A model with a config, as LlamaForCausalLM has, and a trivially finite loss. */
class Positional extends Toy {
  config = { maxPositionEmbeddings: 4 };
}

Deno.test("train refuses sequences beyond max_position_embeddings before any step, naming the shape", async () => {
  const model = new Positional();
  const optimizer = new AdamW([model.w], { lr: 0.1 });
  const before = Array.from(await model.w.data());
  await assert.rejects(
    train({ model, optimizer, batches: [{ inputIds: [[1, 2, 3, 4, 5]] }], steps: 2 }),
    (e: unknown) =>
      e instanceof ShapeError && /step 1 has inputIds \[1,5\].*max_position_embeddings \(4\)/.test(e.message),
  );
  assert.deepEqual(Array.from(await model.w.data()), before, "no update ran");
  const ok = await train({ model, optimizer, batches: [{ inputIds: [[1, 2, 3, 4]] }], steps: 1 });
  assert.equal(ok.step, 1, "exactly max_position_embeddings tokens train");
});
