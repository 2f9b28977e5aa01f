/**
 * Saves that fail midway — a directory in the way, a write or mkdir refused by the filesystem, a rename
 * refused after others succeeded — for `saveModel` / `savePretrained` and for training checkpoints
 * (`saveCheckpoint`, `train({ checkpointDir })`). Every failure is reported, leaves no temporary file,
 * and leaves the previous save intact byte for byte and loadable (saves switch a complete new folder in
 * with one rename, so there is no half-replaced state to refuse).
 */
import assert from "node:assert/strict";
import {
  AdamW,
  applyLoraToLinearModules,
  ConfigError,
  cpuDevice,
  FormatError,
  llamaConfig,
  LlamaForCausalLM,
  loadCheckpoint,
  manualSeed,
  PeftConfig,
  saveCheckpoint,
  saveModel,
  train,
} from "../../mod.ts";
import { withTempDir as withDir } from "../models/tiny_model.ts";
import { _setFsForTesting, type FsOps } from "../../src/io/fs.ts";

const CONFIG = llamaConfig({
  vocabSize: 24,
  hiddenSize: 16,
  intermediateSize: 24,
  numHiddenLayers: 2,
  numAttentionHeads: 2,
  numKeyValueHeads: 1,
});

function baseModel(seed: number): LlamaForCausalLM {
  return new LlamaForCausalLM(CONFIG, { device: cpuDevice(), seed });
}

function loraModel(): LlamaForCausalLM {
  const model = baseModel(3);
  manualSeed(41);
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj", "*.v_proj"], dim: 2 }));
  return model;
}

const BATCHES = [{ inputIds: [[1, 2, 3, 4, 5, 6]] }, { inputIds: [[9, 8, 7, 6, 5, 4]] }];

/** Names and bytes of every file in `dir`, sorted by name. */
function snapshot(dir: string): [string, Uint8Array][] {
  return [...Deno.readDirSync(dir)]
    .map((e) => e.name)
    .sort()
    .map((
      name,
    ) => [
      name,
      Deno.statSync(`${dir}/${name}`).isDirectory ? new Uint8Array() : Deno.readFileSync(`${dir}/${name}`),
    ]);
}

type FsCall = "write" | "rename" | "mkdirp";

/** The real filesystem, except that calls for which `fail` says so are refused like a full disk would. */
function faultyFs(fail: (call: FsCall, path: string) => boolean): FsOps {
  const refuse = (call: FsCall, path: string) =>
    Promise.reject(new Error(`injected ${call} failure at ${path}`));
  return {
    readFile: (p) => Deno.readFile(p),
    writeFile: (p, d) => (fail("write", p) ? refuse("write", p) : Deno.writeFile(p, d)),
    rename: (a, b) => (fail("rename", b) ? refuse("rename", b) : Deno.rename(a, b)),
    mkdirp: (p) => (fail("mkdirp", p) ? refuse("mkdirp", p) : Deno.mkdir(p, { recursive: true })),
    remove: (p) => Deno.remove(p),
    kind: async (p) => {
      try {
        return (await Deno.stat(p)).isDirectory ? "dir" : "file";
      } catch {
        return null;
      }
    },
  };
}

/** Runs `fn` with `fs` as the library's filesystem. */
async function withFs<T>(fs: FsOps, fn: () => Promise<T>): Promise<T> {
  _setFsForTesting(fs);
  try {
    return await fn();
  } finally {
    _setFsForTesting(null);
  }
}

/** The n-th call of kind `call` (1-based) fails; counts every such call. */
function nth(call: FsCall, n: number): { fail: (c: FsCall) => boolean; count: () => number } {
  let seen = 0;
  return { fail: (c) => c === call && ++seen === n, count: () => seen };
}

// ---------------------------------------------------------------------------------------------------
// saveModel / savePretrained

/** Saves model 1, then lets `breakSave` fail the save of model 2; returns what the directory held. */
async function failedModelOverwrite(
  dir: string,
  breakSave: () => Promise<unknown>,
): Promise<{ before: [string, Uint8Array][]; error: unknown }> {
  await baseModel(1).savePretrained(dir);
  const before = snapshot(dir);
  const error = await breakSave().then(() => null, (e) => e);
  return { before, error };
}

/** The model in `dir` is exactly model 1. */
async function assertModelOneLoads(dir: string): Promise<void> {
  const loaded = await LlamaForCausalLM.fromPretrained(dir, { device: cpuDevice() });
  const expected = baseModel(1).stateDict();
  for (const [k, t] of Object.entries(loaded.stateDict())) {
    assert.deepEqual(t.dataSync(), expected[k].dataSync(), k);
  }
}

Deno.test("saveModel: a directory in the way fails the save with a ConfigError; the previous save is intact", async () => {
  await withDir(async (dir) => {
    // A sharded save of model 2 writes an index where a directory now stands.
    const { before, error } = await failedModelOverwrite(dir, async () => {
      Deno.mkdirSync(`${dir}/model.safetensors.index.json`);
      await saveModel(baseModel(2), dir, { maxShardBytes: 4000 });
    });
    assert.ok(error instanceof ConfigError && /is a directory/.test(error.message), `${error}`);
    Deno.removeSync(`${dir}/model.safetensors.index.json`);
    assert.deepEqual(snapshot(dir), before, "same files, same bytes, no temporaries");
    await assertModelOneLoads(dir);
  });
});

Deno.test("savePretrained: a write refused midway leaves the previous save intact and no temporaries", async () => {
  await withDir(async (dir) => {
    const second = nth("write", 2);
    const { before, error } = await failedModelOverwrite(
      dir,
      () => withFs(faultyFs(second.fail), () => baseModel(2).savePretrained(dir)),
    );
    assert.match(String(error), /injected write failure/);
    assert.equal(second.count(), 2);
    assert.deepEqual(snapshot(dir), before);
    await assertModelOneLoads(dir);
  });
});

Deno.test("saveModel: a sharded save whose last shard write fails leaves the previous single file intact", async () => {
  await withDir(async (dir) => {
    let shards = 0;
    const failLastShard = (call: FsCall, path: string) =>
      call === "write" && /model-0000\d-of/.test(path) && ++shards === 3;
    const { before, error } = await failedModelOverwrite(
      dir,
      () => withFs(faultyFs(failLastShard), () => saveModel(baseModel(2), dir, { maxShardBytes: 6000 })),
    );
    assert.match(String(error), /injected write failure/);
    assert.deepEqual(snapshot(dir), before);
    await assertModelOneLoads(dir);
  });
});

Deno.test("saveModel: a directory that cannot be created is an error and nothing is written", async () => {
  await withDir(async (dir) => {
    const target = `${dir}/nested/model`;
    const error = await withFs(faultyFs((call) => call === "mkdirp"), () => saveModel(baseModel(2), target))
      .then(() => null, (e) => e);
    assert.match(String(error), /injected mkdirp failure/);
    assert.deepEqual(snapshot(dir), []);
  });
});

Deno.test("saveModel: the final switch refused is a ConfigError naming saveModel; the previous save is intact", async () => {
  await withDir(async (root) => {
    const dir = `${root}/model`;
    const { before, error } = await failedModelOverwrite(
      dir,
      () =>
        withFs(
          faultyFs((call, path) => call === "rename" && path === dir),
          () => saveModel(baseModel(2), dir),
        ),
    );
    assert.ok(
      error instanceof ConfigError && /^saveModel: could not replace/.test(error.message),
      `${error}`,
    );
    assert.deepEqual(snapshot(dir), before);
    assert.equal([...Deno.readDirSync(root)].length, 2, "the link and its folder, no leftovers");
    await assertModelOneLoads(dir);
  });
});

// ---------------------------------------------------------------------------------------------------
// Training checkpoints

/** Trains `steps` steps uninterrupted and returns the losses and adapter weights. */
async function uninterrupted(steps: number): Promise<{ losses: number[]; weights: Float32Array[] }> {
  const model = loraModel();
  const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
  const { losses } = await train({ model, optimizer, batches: BATCHES, steps, logEvery: 2 });
  return { losses, weights: model.trainableParameters().map((p) => p.dataSync() as Float32Array) };
}

Deno.test("train: a checkpoint save failing at step 4 keeps the step-2 checkpoint intact, and resuming from it is exact", async () => {
  await withDir(async (dir) => {
    const model = loraModel();
    const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
    let atStep2: [string, Uint8Array][] = [];
    // The first checkpoint writes 4 files; the second save's optimizer file (its 7th write) fails.
    const seventh = nth("write", 7);
    const error = await withFs(faultyFs(seventh.fail), () =>
      train({
        model,
        optimizer,
        batches: BATCHES,
        steps: 6,
        logEvery: 2,
        checkpointDir: dir,
        onProgress: (p) => {
          if (p.step === 4) atStep2 = snapshot(dir);
        },
      })).then(() => null, (e) => e);
    assert.match(String(error), /injected write failure/);
    assert.deepEqual(
      atStep2.map(([n]) => n),
      ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"],
    );
    assert.deepEqual(snapshot(dir), atStep2, "the step-2 checkpoint, byte for byte, and no temporaries");

    const resumed = loraModel();
    const opt = new AdamW(resumed.trainableParameters(), { lr: 1e-2 });
    const result = await train({
      model: resumed,
      optimizer: opt,
      batches: BATCHES,
      steps: 6,
      logEvery: 2,
      resumeFrom: dir,
    });
    const reference = await uninterrupted(6);
    assert.deepEqual(result.losses, reference.losses);
    assert.deepEqual(resumed.trainableParameters().map((p) => p.dataSync()), reference.weights);
  });
});

Deno.test("saveCheckpoint: the final switch refused keeps the previous checkpoint whole and loadable", async () => {
  await withDir(async (root) => {
    const dir = `${root}/ckpt`;
    const model = loraModel();
    const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
    await train({ model, optimizer, batches: BATCHES, steps: 2, logEvery: 2, checkpointDir: dir });
    const before = snapshot(dir);
    await train({ model, optimizer, batches: BATCHES, steps: 2, logEvery: 2 }); // new weights and moments
    const error = await withFs(
      faultyFs((call, path) => call === "rename" && path === dir),
      () => saveCheckpoint(dir, { model, optimizer, step: 4 }),
    ).then(() => null, (e) => e);
    assert.ok(
      error instanceof ConfigError && /^saveCheckpoint: could not replace/.test(error.message),
      `${error}`,
    );
    assert.deepEqual(snapshot(dir), before, "the step-2 checkpoint byte for byte");
    const fresh = loraModel();
    const state = await loadCheckpoint(dir, {
      model: fresh,
      optimizer: new AdamW(fresh.trainableParameters(), { lr: 1e-2 }),
    });
    assert.equal(state.step, 2);
  });
});

Deno.test("loadCheckpoint: a checkpoint file edited after saving is refused; untouched ones load", async () => {
  await withDir(async (dir) => {
    const model = loraModel();
    const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 });
    await train({ model, optimizer, batches: BATCHES, steps: 2, logEvery: 2, checkpointDir: dir });
    const load = () => {
      const m = loraModel();
      return loadCheckpoint(dir, { model: m, optimizer: new AdamW(m.trainableParameters(), { lr: 1e-2 }) });
    };
    assert.equal((await load()).step, 2);
    const path = `${dir}/optimizer.safetensors`;
    const bytes = Deno.readFileSync(path);
    bytes[bytes.length - 1] ^= 1; // one bit of one moment value
    Deno.writeFileSync(path, bytes);
    await assert.rejects(
      load,
      (e: unknown) => e instanceof FormatError && /optimizer\.safetensors/.test(e.message),
    );
  });
});
