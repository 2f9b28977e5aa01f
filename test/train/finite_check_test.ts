/** The training loop's opt-in finite check: a step with a NaN loss or gradient is skipped and reported. */
import assert from "node:assert/strict";
import { AdamW, Module, mul, sum, type Tensor, tensor, train } from "../../mod.ts";

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

Deno.test("train without the check lets a NaN step poison the weights (why the check exists)", async () => {
  const model = new Toy();
  const optimizer = new AdamW([model.w], { lr: 0.1 });
  const result = await train({ model, optimizer, batches, steps: 4, logEvery: 4 });
  assert.deepEqual(result.skippedSteps, []);
  assert.ok(Array.from(await model.w.data()).some(Number.isNaN));
});
