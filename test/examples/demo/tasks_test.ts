/** The demo's task generators, held-out split and exact-match scoring. */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  END_OF_ANSWER,
  exactMatchAccuracy,
  heldOutExamples,
  heldOutPoolSize,
  isExactMatch,
  isHeldOut,
  numberCount,
  shiftExample,
  TASK_A,
  TASK_B,
  trainingExamples,
} from "../../../examples/demo/tasks.ts";
import { SeededRandom } from "../../../examples/demo/rng.ts";

/** The number a prompt such as "0917+2=" starts with. */
const promptValue = (prompt: string) => Number(prompt.slice(0, prompt.indexOf("+")));

Deno.test("shiftExample: every completion digit is the prompt digit plus the shift, mod 10", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 9999 }), fc.constantFrom(TASK_A, TASK_B), (value, task) => {
      const { prompt, completion } = shiftExample(task, value);
      assert.match(prompt, new RegExp(`^\\d{4}\\+${task.shift}=$`));
      assert.ok(completion.endsWith(END_OF_ANSWER));
      const digits = prompt.slice(0, 4), answer = completion.slice(0, -1);
      assert.equal(answer.length, 4);
      for (let i = 0; i < 4; i++) assert.equal((Number(digits[i]) + task.shift) % 10, Number(answer[i]));
      assert.equal(promptValue(prompt), value);
    }),
    { numRuns: 200 },
  );
});

Deno.test("shiftExample: tasks A and B give different answers for every number", () => {
  for (let v = 0; v < numberCount(TASK_A); v += 37) {
    assert.notEqual(shiftExample(TASK_A, v).completion, shiftExample(TASK_B, v).completion);
  }
});

Deno.test("shiftExample: values outside [0, 10^digits) or not integers are RangeErrors", () => {
  for (const bad of [-1, 10000, 2.5, NaN]) assert.throws(() => shiftExample(TASK_A, bad), RangeError);
});

Deno.test("isHeldOut: holds out roughly a fifth of the numbers, spread over the whole range", () => {
  const pool = heldOutPoolSize(TASK_B);
  assert.ok(pool > 0.15 * 10000 && pool < 0.25 * 10000, `pool ${pool}`);
  for (let start = 0; start < 10000; start += 1000) {
    let n = 0;
    for (let v = start; v < start + 1000; v++) n += isHeldOut(v) ? 1 : 0;
    assert.ok(n > 100 && n < 300, `held out in [${start}, ${start + 1000}): ${n}`);
  }
});

Deno.test("trainingExamples: never a held-out number, and the same stream gives the same examples", () => {
  const a = trainingExamples(TASK_B, 500, new SeededRandom(3));
  assert.equal(a.length, 500);
  for (const ex of a) assert.ok(!isHeldOut(promptValue(ex.prompt)), ex.prompt);
  assert.deepEqual(trainingExamples(TASK_B, 500, new SeededRandom(3)), a);
  assert.notDeepEqual(trainingExamples(TASK_B, 500, new SeededRandom(4)), a);
});

Deno.test("heldOutExamples: distinct held-out numbers, deterministic per seed, bounded by the pool", () => {
  const a = heldOutExamples(TASK_B, 300, 11);
  const values = a.map((e) => promptValue(e.prompt));
  assert.equal(new Set(values).size, 300);
  for (const v of values) assert.ok(isHeldOut(v));
  assert.deepEqual(heldOutExamples(TASK_B, 300, 11), a);
  assert.notDeepEqual(heldOutExamples(TASK_B, 300, 12), a);
  const pool = heldOutPoolSize(TASK_B);
  assert.equal(heldOutExamples(TASK_B, pool, 1).length, pool);
  assert.throws(() => heldOutExamples(TASK_B, pool + 1, 1), RangeError);
  assert.throws(() => heldOutExamples(TASK_B, 0, 1), RangeError);
});

Deno.test("isExactMatch: compares up to and including the first EOS", () => {
  const eos = 10;
  assert.ok(isExactMatch([1, 2, eos], [1, 2, eos], eos));
  assert.ok(isExactMatch([1, 2, eos, 7, 7], [1, 2, eos], eos), "tokens after EOS do not count");
  assert.ok(!isExactMatch([1, 3, eos], [1, 2, eos], eos));
  assert.ok(!isExactMatch([1, 2], [1, 2, eos], eos), "a missing EOS is a miss");
  assert.ok(!isExactMatch([1, 2, 3, eos], [1, 2, eos], eos), "a longer answer is a miss");
  assert.ok(!isExactMatch([1, eos], [1, 2, eos], eos), "a shorter answer is a miss");
  assert.ok(isExactMatch([4, 5], [4, 5], null));
  assert.ok(!isExactMatch([4, 5, 6], [4, 5], null));
});

Deno.test("exactMatchAccuracy: the fraction of exact matches; mismatched or empty inputs are errors", () => {
  const eos = 0;
  const targets = [[1, eos], [2, eos], [3, eos], [4, eos]];
  assert.equal(exactMatchAccuracy([[1, eos], [2, eos], [9, eos], [4]], targets, eos), 0.5);
  assert.equal(exactMatchAccuracy(targets, targets, eos), 1);
  assert.equal(exactMatchAccuracy(targets.map(() => [eos]), targets, eos), 0);
  assert.throws(() => exactMatchAccuracy([[1]], targets, eos), RangeError);
  assert.throws(() => exactMatchAccuracy([], [], eos), RangeError);
});

Deno.test("SeededRandom: int(n) stays in [0, n) and covers it", () => {
  const rng = new SeededRandom(5);
  const seen = new Set<number>();
  for (let i = 0; i < 1000; i++) {
    const k = rng.int(10);
    assert.ok(Number.isInteger(k) && k >= 0 && k < 10);
    seen.add(k);
  }
  assert.equal(seen.size, 10);
});
