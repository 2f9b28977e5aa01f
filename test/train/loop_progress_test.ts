/** train({ progress }): the progress line drawn at the loop's reports, on a terminal, in a log, and on stderr. */
import assert from "node:assert/strict";
import { AdamW, applyLoraToLinearModules, ConfigError, PeftConfig, train } from "../../mod.ts";
import { tinyModel, tokenRows } from "../models/tiny_model.ts";

function setup() {
  const model = tinyModel();
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj"], dim: 2 }));
  return {
    model,
    optimizer: new AdamW(model.trainableParameters()),
    batches: [{ inputIds: tokenRows(2, 6) }],
  };
}

Deno.test("progress without a terminal: a plain line every `every` steps and at the last, with the loss read back", async () => {
  const out: string[] = [];
  const losses: number[] = [];
  await train({
    ...setup(),
    steps: 7,
    logEvery: 2,
    progress: { write: (t) => out.push(t), tty: false, every: 4 },
    onProgress: (p) => losses.push(p.loss),
  });
  assert.ok(out.every((t) => t.endsWith("\n") && !t.includes("\r")), JSON.stringify(out));
  assert.deepEqual(out.map((t) => Number(/^step (\d+)\/7 /.exec(t)![1])), [2, 6, 7]); // reports at 2, 4, 6, 7
  // the line shows the report's mean loss, as onProgress received it
  assert.ok(out[2].includes(`loss ${losses[3].toFixed(4)}`), out[2]);
  assert.match(out[2], /\[#{20}\] loss \d+\.\d{4} \| \d+ tok\/s \| ETA 0:00/);
});

Deno.test("progress on a terminal: every report redraws the line in place, and the run ends it with a newline", async () => {
  const out: string[] = [];
  await train({ ...setup(), steps: 4, logEvery: 1, progress: { write: (t) => out.push(t), tty: true } });
  assert.equal(out.length, 5);
  assert.ok(out.slice(0, 4).every((t, i) => t.startsWith(`\rstep ${i + 1}/4 `) && !t.includes("\n")));
  assert.equal(out[4], "\n");
});

Deno.test("progress: true draws on standard error: plain lines when stderr is not a terminal", async () => {
  const script = `
    import { AdamW, applyLoraToLinearModules, PeftConfig, train } from "./mod.ts";
    import { tinyModel, tokenRows } from "./test/models/tiny_model.ts";
    const model = tinyModel();
    applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj"], dim: 2 }));
    await train({ model, optimizer: new AdamW(model.trainableParameters()), batches: [{ inputIds: tokenRows(2, 6) }],
      steps: 20, logEvery: 5, progress: true });
    console.log("done");
  `;
  const root = new URL("../../", import.meta.url).pathname;
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stdout, stderr } = await cmd.output();
  const err = new TextDecoder().decode(stderr);
  assert.equal(code, 0, err);
  assert.equal(new TextDecoder().decode(stdout), "done\n"); // nothing but the script's own output on stdout
  const lines = err.split("\n").filter((l) => l.startsWith("step "));
  assert.deepEqual(lines.map((l) => Number(/^step\s+(\d+)\/20/.exec(l)![1])), [5, 10, 15, 20], err);
  assert.ok(!err.includes("\r"));
});

Deno.test("a malformed progress option is a ConfigError before the first step", async () => {
  for (
    const progress of ["yes", { write: 1, tty: false }, { write: () => {}, tty: "no" }, {
      write: () => {},
      tty: true,
      every: 0,
    }]
  ) {
    await assert.rejects(
      // deno-lint-ignore no-explicit-any
      () => train({ ...setup(), steps: 1, progress: progress as any }),
      (e: Error) => e instanceof ConfigError && /^train: progress must be/.test(e.message),
      JSON.stringify(progress),
    );
  }
});
