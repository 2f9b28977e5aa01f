/** The training progress line of train({ progress }) and the demo: formatting, redraws on a terminal, plain lines elsewhere. */
import assert from "node:assert/strict";
import {
  formatBar,
  formatDuration,
  formatProgress,
  type ProgressFigures,
  ProgressLine,
} from "../../src/train/progress.ts";

const figures = (step: number, totalSteps = 100): ProgressFigures => ({
  step,
  totalSteps,
  loss: 1.23456,
  tokensPerSecond: 1543.7,
  etaSeconds: 75,
});

Deno.test("formatDuration: minutes:seconds, hours when needed, ? when unknown", () => {
  assert.equal(formatDuration(0), "0:00");
  assert.equal(formatDuration(75), "1:15");
  assert.equal(formatDuration(3725), "1:02:05");
  assert.equal(formatDuration(Infinity), "?");
  assert.equal(formatDuration(-1), "?");
});

Deno.test("formatBar: filled in proportion, always width cells", () => {
  assert.equal(formatBar(0, 10, 10), "[..........]");
  assert.equal(formatBar(5, 10, 10), "[#####.....]");
  assert.equal(formatBar(10, 10, 10), "[##########]");
  assert.equal(formatBar(20, 10, 4), "[####]");
});

Deno.test("formatProgress: step, bar, loss, tokens/s and ETA on one line", () => {
  const line = formatProgress(figures(40, 120));
  assert.ok(!line.includes("\n"));
  assert.match(line, /^step {2}40\/120 \[#+\.+\] loss 1\.2346 \| 1544 tok\/s \| ETA 1:15$/);
  assert.match(formatProgress({ ...figures(1), loss: 0.00012 }), /loss 1\.20e-4/);
});

Deno.test("ProgressLine on a terminal: redraws in place with \\r and ends the line on finish", () => {
  const out: string[] = [];
  const bar = new ProgressLine({ write: (t) => out.push(t), tty: true });
  bar.update(figures(1));
  bar.update(figures(2));
  bar.finish();
  assert.equal(out.length, 3);
  assert.ok(out[0].startsWith("\r") && out[1].startsWith("\r"));
  assert.ok(!out[0].includes("\n") && !out[1].includes("\n"));
  assert.ok(out[1].includes("step   2/100"));
  assert.equal(out[2], "\n");
});

Deno.test("ProgressLine without a terminal: a plain line every N steps and at the last step", () => {
  const out: string[] = [];
  const bar = new ProgressLine({ write: (t) => out.push(t), tty: false, every: 10 });
  for (let s = 2; s <= 25; s += 2) bar.update(figures(s, 25));
  bar.update(figures(25, 25));
  bar.finish();
  assert.ok(out.every((t) => t.endsWith("\n") && !t.includes("\r")));
  const steps = out.map((t) => Number(/step\s+(\d+)/.exec(t)![1]));
  assert.deepEqual(steps, [2, 12, 22, 25]);
});
