/**
 * Issue 23's careless-user list, re-run: each case from the issue (and the leftovers of its first round) is
 * tried as a user would, and its outcome printed as one line: the error class and message (or what
 * happened instead) and how long it took. For the closing note; the assertions live in the tests.
 *
 *   deno run -A scripts/careless_user.ts
 * @module
 */
import {
  AdamW,
  applyLoraToLinearModules,
  cpuDevice,
  Device,
  Linear,
  llamaConfig,
  LlamaForCausalLM,
  loadAdapter,
  manualSeed,
  PeftConfig,
  randn,
  saveAdapter,
  train,
  zeros,
} from "../mod.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";

const root = await Deno.makeTempDir({ prefix: "careless-" });

function tiny(device: Device = cpuDevice(), maxPositionEmbeddings = 64): LlamaForCausalLM {
  const config = llamaConfig({
    vocabSize: 64,
    hiddenSize: 32,
    intermediateSize: 48,
    numHiddenLayers: 2,
    numAttentionHeads: 4,
    numKeyValueHeads: 2,
    maxPositionEmbeddings,
  });
  const model = new LlamaForCausalLM(config, { device, seed: 7 });
  manualSeed(1);
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj", "*.v_proj"], dim: 4 }));
  return model;
}

const rows = (b: number, t: number) =>
  Array.from({ length: b }, (_, r) => Array.from({ length: t }, (_, i) => (i * 7 + r * 3) % 64));

async function tryCase(name: string, fn: () => Promise<string | void> | string | void): Promise<void> {
  const t = performance.now();
  let outcome: string;
  try {
    const r = await fn();
    outcome = `no error${r ? `: ${r}` : ""}`;
  } catch (e) {
    const err = e as Error;
    outcome = `${err.name}: ${err.message}`.replace(/\s+/g, " ").slice(0, 260);
  }
  console.log(`- ${name} [${(performance.now() - t).toFixed(0)} ms] -> ${outcome}`);
}

// 1. saveAdapter with non-finite weights (a run at lr 1e6)
await tryCase("train at lr 1e6 (train() stops at the first non-finite loss)", async () => {
  const model = tiny();
  const optimizer = new AdamW(model.trainableParameters(), { lr: 1e6 });
  await train({ model, optimizer, batches: [{ inputIds: rows(2, 8) }], steps: 30, logEvery: 1 });
});
await tryCase("saveAdapter of NaN weights over a good adapter", async () => {
  const model = tiny();
  await saveAdapter(model, `${root}/good`);
  const before = Deno.readFileSync(`${root}/good/adapter_model.safetensors`);
  const p = model.trainableParameters().find((q) => q.shape[0] > 0)!;
  model.loadStateDict({
    [model.namedParameters().find(([, t]) => t === p)![0]]: {
      shape: [...p.shape],
      data: new Float32Array(p.size).fill(NaN),
    },
  }, { strict: false });
  try {
    await saveAdapter(model, `${root}/good`);
  } finally {
    const after = Deno.readFileSync(`${root}/good/adapter_model.safetensors`);
    console.log(
      `    (the good adapter is ${before.every((b, i) => b === after[i]) ? "unchanged" : "CHANGED"})`,
    );
  }
});
// 2. sequences longer than max_position_embeddings
await tryCase("train on 1 x 80 tokens with max_position_embeddings 64", async () => {
  const model = tiny();
  await train({
    model,
    optimizer: new AdamW(model.trainableParameters()),
    batches: [{ inputIds: rows(1, 80) }],
    steps: 1,
  });
});
await tryCase("demo CLI --seq-len 5000", async () => {
  const t = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "examples/demo.ts", "--seq-len", "5000"],
    stdout: "null",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1);
  throw new Error(`exit code ${out.code} after ${(performance.now() - t).toFixed(0)} ms: ${err}`);
});
await tryCase("generate 60 new tokens after a 10-token prompt with max_position_embeddings 16", async () => {
  const model = tiny(cpuDevice(), 16);
  const [row] = await model.generate([rows(1, 10)[0]], { maxNewTokens: 60, eosTokenId: null });
  return `${row.length} tokens (RoPE extrapolates, as transformers)`;
});
// 3. huge sizes
await tryCase("new Linear(200000, 200000)", () => void new Linear(200_000, 200_000));
await tryCase("randn([100000, 100000])", () => void randn([100_000, 100_000]));
await tryCase("zeros([100000, 100000])", () => void zeros([100_000, 100_000]));
await tryCase("zeros([2, -1])", () => void zeros([2, -1]));
await tryCase("train with a 64 x 64 batch under a 4 MB memory limit", async () => {
  const device = new Device(createCpuBackend(), "cpu", "careless");
  const model = tiny(device);
  const optimizer = new AdamW(model.trainableParameters());
  device.setMemoryLimit(device.memory().bytes + 4_000_000);
  const live = device.memory().bytes;
  try {
    await train({ model, optimizer, batches: [{ inputIds: rows(64, 64) }], steps: 1 });
  } finally {
    console.log(`    (live bytes ${live} -> ${device.memory().bytes})`);
  }
});
// 4. filesystem failures
await tryCase("saveAdapter under a regular file (file/sub)", async () => {
  Deno.writeTextFileSync(`${root}/file`, "user data");
  await saveAdapter(tiny(), `${root}/file/sub`);
});
await tryCase("saveAdapter onto a regular file", async () => {
  await saveAdapter(tiny(), `${root}/file`);
});
await tryCase("loadAdapter from a directory that does not exist", async () => {
  await loadAdapter(tiny(), `${root}/nowhere`);
});
await tryCase("train resumeFrom a directory that does not exist", async () => {
  const model = tiny();
  await train({
    model,
    optimizer: new AdamW(model.trainableParameters()),
    batches: [{ inputIds: rows(1, 8) }],
    steps: 1,
    resumeFrom: `${root}/nowhere`,
  });
});
// 5. a save killed between its files, and the leftovers of killed saves
await tryCase("a writer SIGKILLed mid-save (3 times), then one more save", async () => {
  const dir = `${root}/killed`;
  const child = new URL("../test/io/write_dir_child.ts", import.meta.url).pathname;
  let mixed = 0, leftovers = 0;
  for (let k = 0; k < 3; k++) {
    const proc = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", child, dir],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const reader = proc.stdout.getReader();
    await reader.read();
    await new Promise((r) => setTimeout(r, 20 + 30 * Math.random()));
    proc.kill("SIGKILL");
    await proc.status;
    reader.releaseLock();
    await proc.stdout.cancel();
    const a = Deno.readTextFileSync(`${dir}/a.txt`);
    const b = Deno.readTextFileSync(`${dir}/sub/b.txt`).split("\n")[0];
    if (a !== b) mixed++;
    leftovers = Math.max(
      leftovers,
      [...Deno.readDirSync(root)].filter((e) => e.name.startsWith(".killed.")).length - 1,
    );
  }
  await saveAdapter(tiny(), dir);
  const left = [...Deno.readDirSync(root)].filter((e) => e.name.startsWith(".killed.")).map((e) => e.name);
  const after = left.length - 1;
  if (after > 0) console.log(`    (left: ${left.join(", ")}; current: ${Deno.readLinkSync(dir)})`);
  return `${mixed} mixed saves; up to ${leftovers} leftover folders after the kills, ${after} after the next save`;
});
// 6. confusing messages
await tryCase("forward with a token id of 2.7", () => {
  tiny().forward([[1, 2.7, 3]], {});
});
await tryCase("forward with [[]]", () => {
  tiny().forward([[]], {});
});
await tryCase('PeftConfig({ dim: "8" })', () => {
  new PeftConfig({ targetModules: ["*.q_proj"], dim: "8" as unknown as number });
});

await Deno.remove(root, { recursive: true });
