/** The demo's command line: parsing, --help, and one-line errors with exit code 2 from the real program. */
import assert from "node:assert/strict";
import {
  DEMO_DESCRIPTION,
  DEMO_FLAGS,
  DEMO_USAGE,
  helpText,
  parseDemoArgs,
  parseFlags,
  UsageError,
  widenTarget,
} from "../../../examples/demo/cli.ts";

Deno.test("parseDemoArgs: defaults describe the shipped demo", () => {
  const o = parseDemoArgs([])!;
  assert.equal(o.base, null);
  assert.equal(o.data, null);
  assert.equal(o.resume, null);
  assert.equal(o.out, "lora-out");
  assert.equal(o.device, "auto");
  assert.deepEqual(o.targets, ["*_proj"]);
  for (const k of ["steps", "batch", "rank", "alpha", "lr", "evalCount", "seqLen"] as const) {
    assert.ok(o[k] > 0, `${k} = ${o[k]}`);
  }
});

Deno.test("parseDemoArgs: --flag value and --flag=value both work; lists widen bare names", () => {
  const o = parseDemoArgs([
    "--steps=7",
    "--rank",
    "4",
    "--alpha",
    "2.5",
    "--lr=1e-3",
    "--targets",
    "q_proj, model.layers.0.mlp.down_proj,*.v_proj",
    "--device",
    "cpu",
    "--seed",
    "0",
    "--base",
    "some/dir",
    "--data=x.jsonl",
    "--resume",
    "ckpt",
    "--out",
    "o",
  ])!;
  assert.equal(o.steps, 7);
  assert.equal(o.rank, 4);
  assert.equal(o.alpha, 2.5);
  assert.equal(o.lr, 1e-3);
  assert.deepEqual(o.targets, ["*.q_proj", "model.layers.0.mlp.down_proj", "*.v_proj"]);
  assert.equal(o.device, "cpu");
  assert.equal(o.seed, 0);
  assert.equal(o.base, "some/dir");
  assert.equal(o.data, "x.jsonl");
  assert.equal(o.resume, "ckpt");
  assert.equal(o.out, "o");
});

Deno.test("widenTarget: only bare names become *.name", () => {
  assert.equal(widenTarget("q_proj"), "*.q_proj");
  assert.equal(widenTarget("lm_head"), "*.lm_head");
  assert.equal(widenTarget("*_proj"), "*_proj");
  assert.equal(widenTarget("model.layers.1.self_attn.o_proj"), "model.layers.1.self_attn.o_proj");
});

Deno.test("parseDemoArgs: -h and --help ask for help", () => {
  assert.equal(parseDemoArgs(["--help"]), null);
  assert.equal(parseDemoArgs(["--steps", "3", "-h"]), null);
});

Deno.test("parseFlags: bad input is a UsageError naming the flag", () => {
  const cases: [string[], RegExp][] = [
    [["--stepz", "3"], /unknown flag --stepz/],
    [["--steps"], /--steps needs a value/],
    [["--steps", "--rank", "2"], /--steps needs a value/],
    [["--steps", "0"], /--steps must be an integer ≥ 1, got "0"/],
    [["--steps", "2.5"], /--steps must be an integer/],
    [["--rank", "abc"], /--rank must be an integer/],
    [["--lr", "-1"], /--lr must be a positive number/],
    [["--alpha", "Infinity"], /--alpha must be a positive number/],
    [["--seed", "-1"], /--seed must be an integer ≥ 0/],
    [["--device", "tpu"], /--device must be one of auto, cpu, webgpu, got "tpu"/],
    [["--targets", "q_proj,,v_proj"], /--targets must be a comma-separated list/],
    [["--out="], /--out must not be empty/],
    [["--steps", "3", "--steps", "4"], /--steps is given twice/],
    [["extra"], /unexpected argument "extra"/],
  ];
  for (const [argv, message] of cases) {
    assert.throws(
      () => parseFlags(argv, DEMO_FLAGS),
      (e: Error) => e instanceof UsageError && message.test(e.message),
      argv.join(" "),
    );
  }
});

Deno.test("helpText: documents every flag with its default", () => {
  const text = helpText(DEMO_USAGE, DEMO_DESCRIPTION, DEMO_FLAGS);
  const flat = text.replace(/\s+/g, " ");
  for (const f of DEMO_FLAGS) {
    assert.ok(text.includes(`--${f.name} ${f.metavar}`), f.name);
    assert.ok(flat.includes(f.help), f.name);
    if (f.default !== undefined) assert.ok(flat.includes(`(default: ${f.default})`), f.name);
  }
  for (const line of text.split("\n")) assert.ok(line.length <= 100, `help line too long: ${line}`);
  for (
    const name of [
      "base",
      "data",
      "steps",
      "rank",
      "alpha",
      "lr",
      "targets",
      "resume",
      "out",
      "device",
      "seed",
    ]
  ) {
    assert.ok(DEMO_FLAGS.some((f) => f.name === name), `--${name} is documented`);
  }
});

/** Runs the demo program; returns exit code and output. */
async function runDemoProgram(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const demo = new URL("../../../examples/demo.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", demo, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** stderr holds exactly one line, starting with "demo: ", and no stack trace. */
function assertOneLineError(stderr: string, pattern: RegExp): void {
  const lines = stderr.split("\n").filter((l) => l.trim() !== "" && !l.includes("XDG_RUNTIME_DIR"));
  assert.equal(lines.length, 1, `expected one line, got:\n${stderr}`);
  assert.match(lines[0], /^demo: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(stderr, /\n\s+at /);
}

Deno.test("demo program: --help prints the options and exits 0", async () => {
  const r = await runDemoProgram(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /--resume DIR/);
  assert.match(r.stdout, /--targets LIST/);
});

Deno.test("demo program: an unknown flag is one line on stderr and exit code 2", async () => {
  const r = await runDemoProgram(["--bogus", "1"]);
  assert.equal(r.code, 2);
  assertOneLineError(r.stderr, /unknown flag --bogus/);
});

Deno.test("demo program: a missing --data file, --base directory or --resume checkpoint is exit code 2", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = `${dir}/nope.jsonl`;
    let r = await runDemoProgram(["--data", missing, "--device", "cpu"]);
    assert.equal(r.code, 2);
    assertOneLineError(r.stderr, /--data .*nope\.jsonl: no such file/);
    r = await runDemoProgram(["--base", `${dir}/no-model`, "--device", "cpu"]);
    assert.equal(r.code, 2);
    assertOneLineError(r.stderr, /--base .*no-model: no such directory/);
    r = await runDemoProgram(["--resume", dir, "--device", "cpu"]);
    assert.equal(r.code, 2);
    assertOneLineError(r.stderr, /--resume .*no trainer_state\.json/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo program: a malformed JSONL line and a checkpoint without weights are one-line errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/bad.jsonl`, '{"prompt": "a", "completion": "b"}\n{"prompt": 3}\n');
    let r = await runDemoProgram(["--data", `${dir}/bad.jsonl`, "--device", "cpu", "--steps", "1"]);
    assert.equal(r.code, 2);
    assertOneLineError(r.stderr, /bad\.jsonl line 2 needs string fields "prompt" and "completion"/);
    await Deno.mkdir(`${dir}/model`);
    await Deno.writeTextFile(`${dir}/model/config.json`, "{}");
    r = await runDemoProgram(["--base", `${dir}/model`, "--device", "cpu"]);
    assert.equal(r.code, 2);
    assertOneLineError(r.stderr, /model/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo program: --seq-len beyond the base model's positions is exit code 2 naming max_position_embeddings, before any data or training", async () => {
  const r = await runDemoProgram(["--seq-len", "5000", "--device", "cpu"]);
  assert.equal(r.code, 2, r.stderr);
  assertOneLineError(r.stderr, /--seq-len 5000: longer than the base model's max_position_embeddings \(64\)/);
  assert.doesNotMatch(r.stdout, /^(data|training|accuracy)/m, "refused before reading data or training");
});
