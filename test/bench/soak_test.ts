/**
 * bench/soak.ts in small (issue 24): the tiny model on the CPU reference for a dozen steps runs every part
 * of the soak (memory sampled per step and flat, an oversized batch refused with nothing allocated, the
 * device lost mid-run and resumed from its checkpoint with the reference's losses, exactly) and every
 * check passes. The H200 run of the full soak is in bench/NOTES.md.
 */
import assert from "node:assert/strict";
import { parseSoakArgs, soak } from "../../bench/soak.ts";

Deno.test("bench/soak.ts --tiny: every check passes on the CPU; the summary carries the memory series", async () => {
  const args = parseSoakArgs([
    "--tiny",
    "--steps",
    "12",
    "--checkpoint-every",
    "4",
    "--lose-at",
    "6",
    "--quiet",
  ]);
  assert.equal(args.resumeTo, 8);
  const { ok, summary } = await soak(args);
  const checks = summary.checks as Record<string, { ok: boolean; detail: string }>;
  assert.deepEqual(
    Object.keys(checks).sort(),
    [
      "device loss reported",
      "losses finite",
      "memory flat",
      "nothing of the oversized step allocated",
      "oversized batch refused",
      "resumed losses match the uninterrupted run",
      "steps after the refused batch match the reference",
    ],
  );
  for (const [name, c] of Object.entries(checks)) assert.ok(c.ok, `${name}: ${c.detail}`);
  assert.ok(ok);
  const ref = summary.reference as { memory: { series: { step: number; live: number }[] } };
  assert.ok(ref.memory.series.length >= 12, "a sample for every step at this length");
  const fault = summary.fault as { resumed_from_step: number; worst_abs_diff: number };
  assert.equal(fault.resumed_from_step, 4);
  assert.equal(fault.worst_abs_diff, 0);
});

Deno.test("bench/soak.ts: inconsistent step options are refused before anything runs", () => {
  assert.throws(() => parseSoakArgs(["--tiny", "--steps", "10", "--lose-at", "12"]), /--lose-at/);
  assert.throws(() => parseSoakArgs(["--steps", "10"]), /--ckpt/);
});
