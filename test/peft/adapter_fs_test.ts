/** saveAdapter / loadAdapter through the filesystem: round trip, atomic replacement, missing files. */
import assert from "node:assert/strict";
import {
  adapterToFiles,
  ConfigError,
  FormatError,
  type LinearLoRA,
  loadAdapter,
  saveAdapter,
} from "../../mod.ts";
import { _setFsForTesting, type FsOps, readFileBytes } from "../../src/io/fs.ts";
import { adapterSummary, moduleAt, peftFiles, PROJECTIONS, tinyLlamaTree } from "./adapter_fixtures.ts";

const CONFIG = "adapter_config.json", WEIGHTS = "adapter_model.safetensors";

/** A tree with an adapter on every projection (weights from `seed`). */
async function adapted(seed: number) {
  const model = tinyLlamaTree();
  const ranks = Object.fromEntries(PROJECTIONS.map((n) => [n, 4]));
  await loadAdapter(model, peftFiles(model, { r: 4, target_modules: "all-linear" }, ranks, seed));
  return model;
}

const listDir = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

Deno.test("fs: saveAdapter creates missing directories and writes exactly adapterToFiles' two files", async () => {
  const root = await Deno.makeTempDir();
  try {
    const model = await adapted(1);
    const dir = `${root}/a/b/adapter`;
    await saveAdapter(model, dir, { baseModelNameOrPath: "tiny" });
    assert.deepEqual(listDir(dir), [CONFIG, WEIGHTS]);
    const files = adapterToFiles(model, { baseModelNameOrPath: "tiny" });
    assert.deepEqual(Deno.readFileSync(`${dir}/${WEIGHTS}`), files[WEIGHTS]);
    assert.equal(Deno.readTextFileSync(`${dir}/${CONFIG}`), files[CONFIG]);
    const fresh = tinyLlamaTree();
    await loadAdapter(fresh, `${dir}/`);
    assert.deepEqual(adapterSummary(fresh), adapterSummary(model));
    const name = PROJECTIONS[5];
    assert.deepEqual(
      (moduleAt(fresh, name) as LinearLoRA).lora_B.weight.dataSync(),
      (moduleAt(model, name) as LinearLoRA).lora_B.weight.dataSync(),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("fs: saving over an existing adapter replaces both files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await saveAdapter(await adapted(1), dir);
    const second = await adapted(2);
    await saveAdapter(second, dir);
    assert.deepEqual(Deno.readFileSync(`${dir}/${WEIGHTS}`), adapterToFiles(second)[WEIGHTS]);
    assert.deepEqual(listDir(dir), [CONFIG, WEIGHTS]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fs: a directory in the way of adapter_config.json fails the save, previous weights intact, no temporaries", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await saveAdapter(await adapted(1), dir);
    const previous = Deno.readFileSync(`${dir}/${WEIGHTS}`);
    Deno.removeSync(`${dir}/${CONFIG}`);
    Deno.mkdirSync(`${dir}/${CONFIG}`);
    await assert.rejects(
      saveAdapter(await adapted(2), dir),
      (e: Error) => e instanceof ConfigError && e.message.includes(`${CONFIG} is a directory`),
    );
    assert.deepEqual(Deno.readFileSync(`${dir}/${WEIGHTS}`), previous);
    assert.deepEqual(listDir(dir), [CONFIG, WEIGHTS]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The real filesystem with `fail` consulted before each write and rename. */
function failingFs(fail: (op: "write" | "rename", path: string) => boolean): FsOps {
  const real: FsOps = {
    readFile: (p) => Deno.readFile(p),
    writeFile: (p, d) => Deno.writeFile(p, d),
    rename: (a, b) => Deno.rename(a, b),
    mkdirp: (p) => Deno.mkdir(p, { recursive: true }),
    remove: (p) => Deno.remove(p),
    kind: async (p) => {
      try {
        return (await Deno.stat(p)).isDirectory ? "dir" : "file";
      } catch {
        return null;
      }
    },
  };
  return {
    ...real,
    writeFile: (
      p,
      d,
    ) => (fail("write", p) ? Promise.reject(new Error(`disk full writing ${p}`)) : real.writeFile(p, d)),
    rename: (
      a,
      b,
    ) => (fail("rename", b) ? Promise.reject(new Error(`cannot rename onto ${b}`)) : real.rename(a, b)),
  };
}

Deno.test("fs: when the second file's write fails, both previous files stay and no temporary remains", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await saveAdapter(await adapted(1), dir);
    const before = {
      w: Deno.readFileSync(`${dir}/${WEIGHTS}`),
      c: Deno.readTextFileSync(`${dir}/${CONFIG}`),
    };
    let writes = 0;
    _setFsForTesting(failingFs((op) => op === "write" && ++writes === 2));
    try {
      await assert.rejects(saveAdapter(await adapted(2), dir), /disk full/);
    } finally {
      _setFsForTesting(null);
    }
    assert.equal(writes, 2, "the failure hit the second write");
    assert.deepEqual(Deno.readFileSync(`${dir}/${WEIGHTS}`), before.w);
    assert.equal(Deno.readTextFileSync(`${dir}/${CONFIG}`), before.c);
    assert.deepEqual(listDir(dir), [CONFIG, WEIGHTS]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fs: the final switch refused leaves the previous adapter whole, a ConfigError naming saveAdapter, no leftovers", async () => {
  const root = await Deno.makeTempDir();
  const dir = `${root}/out`;
  try {
    await saveAdapter(await adapted(1), dir);
    const before = {
      w: Deno.readFileSync(`${dir}/${WEIGHTS}`),
      c: Deno.readTextFileSync(`${dir}/${CONFIG}`),
    };
    _setFsForTesting(failingFs((op, path) => op === "rename" && path === dir));
    try {
      await assert.rejects(
        saveAdapter(await adapted(2), dir),
        (e: Error) => e instanceof ConfigError && /^saveAdapter: could not replace/.test(e.message),
      );
    } finally {
      _setFsForTesting(null);
    }
    assert.deepEqual(listDir(dir), [CONFIG, WEIGHTS]);
    assert.deepEqual(Deno.readFileSync(`${dir}/${WEIGHTS}`), before.w);
    assert.equal(Deno.readTextFileSync(`${dir}/${CONFIG}`), before.c);
    assert.equal(listDir(root).length, 2, "out and the one folder it links to, nothing else");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("fs: loading from a directory lacking a file is a FormatError naming the path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      loadAdapter(tinyLlamaTree(), dir),
      (e: Error) => e instanceof FormatError && e.message.includes(CONFIG),
    );
    await saveAdapter(await adapted(1), dir);
    Deno.removeSync(`${dir}/${WEIGHTS}`);
    await assert.rejects(
      loadAdapter(tinyLlamaTree(), dir),
      (e: Error) => e instanceof FormatError && e.message.includes(WEIGHTS),
    );
    Deno.writeFileSync(`${dir}/adapter_model.bin`, new Uint8Array([0x80, 2]));
    await assert.rejects(
      loadAdapter(tinyLlamaTree(), dir),
      (e: Error) => e instanceof FormatError && e.message.includes("adapter_model.bin"),
    );
    // A directory that is not there, or a file given as one, is a bad path: a ConfigError naming the call.
    await assert.rejects(
      loadAdapter(tinyLlamaTree(), `${dir}/nowhere`),
      (e: Error) => e instanceof ConfigError && /^loadAdapter: .*nowhere does not exist$/.test(e.message),
    );
    await assert.rejects(
      loadAdapter(tinyLlamaTree(), `${dir}/adapter_model.bin`),
      (e: Error) =>
        e instanceof ConfigError && /adapter_model\.bin is a file, not a directory$/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fs: readFileBytes reads what was written and reports absence through the runtime's error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    Deno.writeFileSync(`${dir}/x.bin`, new Uint8Array([1, 2, 3]));
    assert.deepEqual(await readFileBytes(`${dir}/x.bin`), new Uint8Array([1, 2, 3]));
    await assert.rejects(readFileBytes(`${dir}/missing.bin`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("saveAdapter: non-finite weights are a FormatError naming the tensor; the good save stays; allowNonFinite writes them", async () => {
  const root = await Deno.makeTempDir();
  const dir = `${root}/out`;
  try {
    await saveAdapter(await adapted(1), dir);
    const before = Deno.readFileSync(`${dir}/${WEIGHTS}`);
    const model = await adapted(2);
    const [name, b] = model.namedParameters().find(([n]) => n.endsWith("lora_B.weight"))!;
    const data = new Float32Array(b.size).fill(0.5);
    data[3] = NaN;
    data[5] = Infinity;
    model.loadStateDict({ [name]: { shape: [...b.shape], data } }, { strict: false });
    await assert.rejects(
      saveAdapter(model, dir),
      (e: unknown) =>
        e instanceof FormatError &&
        e.message.startsWith(`saveAdapter: adapter weight base_model.model.${name} (shape [`) &&
        /holds 2 non-finite value\(s\), the first NaN at flat index 3/.test(e.message),
    );
    assert.deepEqual(Deno.readFileSync(`${dir}/${WEIGHTS}`), before, "the good adapter was not overwritten");
    assert.throws(() => adapterToFiles(model), /^FormatError: adapterToFiles: adapter weight/);
    await assert.rejects(
      saveAdapter(model, dir, { allowNonFinite: "yes" as unknown as boolean }),
      ConfigError,
    );
    await saveAdapter(model, dir, { allowNonFinite: true });
    assert.notDeepEqual(Deno.readFileSync(`${dir}/${WEIGHTS}`), before);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
