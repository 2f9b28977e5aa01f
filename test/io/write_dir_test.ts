/**
 * writeDirAtomic, the all-or-nothing folder save behind saveAdapter, saveModel / savePretrained,
 * saveCheckpoint and PeftModel.saveAdapter: a reader sees one whole save even when two saves race or the
 * writer is killed midway; a regular file in the way is a ConfigError and stays untouched; files of the
 * previous save that the new one does not write are carried over (or dropped on request).
 */
import assert from "node:assert/strict";
import {
  applyLoraToLinearModules,
  ConfigError,
  cpuDevice,
  llamaConfig,
  LlamaForCausalLM,
  loadAdapter,
  manualSeed,
  PeftConfig,
  saveAdapter,
} from "../../mod.ts";
import { _saveTagForTesting, STALE_SAVE_AGE_MS, writeDirAtomic } from "../../src/io/fs.ts";
import { withTempDir } from "../models/tiny_model.ts";

const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

function adapted(seed: number): LlamaForCausalLM {
  const config = llamaConfig({
    vocabSize: 16,
    hiddenSize: 8,
    intermediateSize: 12,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
    numKeyValueHeads: 1,
  });
  const model = new LlamaForCausalLM(config, { device: cpuDevice(), seed: 1 });
  manualSeed(seed);
  applyLoraToLinearModules(
    model,
    new PeftConfig({ targetModules: ["*.q_proj"], dim: 2, loraAInit: "uniform" }),
  );
  // lora_B starts at zero; give each seed its own B so saves differ.
  const sd: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [n, p] of model.namedParameters()) {
    if (n.endsWith("lora_B.weight")) {
      sd[n] = { shape: [...p.shape], data: new Float32Array(p.size).fill(seed) };
    }
  }
  model.loadStateDict(sd, { strict: false });
  return model;
}

Deno.test("writeDirAtomic: a regular file in the way is a ConfigError naming the call and stays byte for byte", async () => {
  await withTempDir(async (root) => {
    const path = `${root}/taken`;
    Deno.writeTextFileSync(path, "user data");
    await assert.rejects(
      saveAdapter(adapted(1), path),
      (e: unknown) =>
        e instanceof ConfigError && /^saveAdapter: .*taken is a file, not a directory/.test(e.message),
    );
    assert.equal(Deno.readTextFileSync(path), "user data");
    Deno.symlinkSync("taken", `${root}/link`);
    await assert.rejects(
      saveAdapter(adapted(1), `${root}/link`),
      (e: unknown) => e instanceof ConfigError && /is a link to a file/.test(e.message),
    );
    assert.deepEqual(names(root), ["link", "taken"]);
    // A file where a parent directory should be: the runtime's AlreadyExists / NotADirectory come back
    // as ConfigErrors naming the public call.
    await assert.rejects(
      saveAdapter(adapted(1), `${path}/sub`),
      (e: unknown) =>
        e instanceof ConfigError && /^saveAdapter: could not create the directory/.test(e.message),
    );
    await assert.rejects(
      loadAdapter(adapted(1), path),
      (e: unknown) =>
        e instanceof ConfigError && /^loadAdapter: .*taken is a file, not a directory/.test(e.message),
    );
    assert.equal(Deno.readTextFileSync(path), "user data");
  });
});

Deno.test("writeDirAtomic: files beside the save are carried over, dropped ones are not, subfolders work", async () => {
  await withTempDir(async (root) => {
    const dir = `${root}/out`;
    Deno.mkdirSync(dir);
    Deno.writeTextFileSync(`${dir}/notes.txt`, "keep me");
    Deno.writeTextFileSync(`${dir}/stale.bin`, "drop me");
    await writeDirAtomic(dir, { "a.txt": "1", "sub/b.txt": "1" }, {
      op: "test",
      drop: (n) => n === "stale.bin",
    });
    assert.deepEqual(names(dir), ["a.txt", "notes.txt", "sub"]);
    assert.equal(Deno.readTextFileSync(`${dir}/notes.txt`), "keep me");
    assert.ok(Deno.lstatSync(dir).isSymlink, "dir became a link to the new folder");
    await writeDirAtomic(dir, { "a.txt": "2", "sub/b.txt": "2" }, { op: "test" });
    assert.equal(Deno.readTextFileSync(`${dir}/sub/b.txt`), "2");
    assert.equal(Deno.readTextFileSync(`${dir}/notes.txt`), "keep me");
    assert.equal(names(root).length, 2, "the link and one folder: earlier folders were removed");
  });
});

Deno.test("writeDirAtomic: the user's own link to a directory is followed and stays a link", async () => {
  await withTempDir(async (root) => {
    Deno.mkdirSync(`${root}/real`);
    Deno.symlinkSync(`${root}/real`, `${root}/mine`);
    await writeDirAtomic(`${root}/mine`, { "a.txt": "1" }, { op: "test" });
    assert.equal(Deno.readLinkSync(`${root}/mine`), `${root}/real`);
    assert.equal(Deno.readTextFileSync(`${root}/mine/a.txt`), "1");
  });
});

Deno.test("saveAdapter: two saves racing into one folder leave one of them whole", async () => {
  await withTempDir(async (root) => {
    const dir = `${root}/out`;
    for (let round = 0; round < 3; round++) {
      await Promise.all([
        saveAdapter(adapted(1), dir),
        saveAdapter(adapted(2), dir),
        saveAdapter(adapted(3), dir),
      ]);
      const loaded = adapted(9);
      // Reload into a fresh base: the B values tell which save won; all of them must agree.
      const fresh = new LlamaForCausalLM(loaded.config, { device: cpuDevice(), seed: 1 });
      await loadAdapter(fresh, dir);
      const values = fresh.namedParameters().filter(([n]) => n.endsWith("lora_B.weight"))
        .flatMap(([, p]) => [...p.dataSync()]);
      assert.ok([1, 2, 3].includes(values[0]) && values.every((v) => v === values[0]), `${values}`);
    }
  });
});

Deno.test("writeDirAtomic: a writer killed mid-save leaves one whole save, never a mix", async () => {
  await withTempDir(async (root) => {
    const dir = `${root}/out`;
    const child = new URL("./write_dir_child.ts", import.meta.url).pathname;
    for (let kill = 0; kill < 3; kill++) {
      const proc = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--no-check", child, dir],
        stdout: "piped",
        stderr: "null",
      }).spawn();
      const reader = proc.stdout.getReader();
      let seen = "";
      while (!seen.includes("saved")) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += new TextDecoder().decode(value);
      }
      await new Promise((r) => setTimeout(r, 5 + 40 * Math.random()));
      proc.kill("SIGKILL");
      await proc.status;
      reader.releaseLock();
      await proc.stdout.cancel();
      const a = Deno.readTextFileSync(`${dir}/a.txt`);
      const b = Deno.readTextFileSync(`${dir}/sub/b.txt`).split("\n")[0];
      assert.equal(b, a, `kill ${kill}: a.txt and sub/b.txt come from the same save`);
    }
    // The killed writer's unfinished folders go with the next save into the same parent.
    await writeDirAtomic(dir, { "a.txt": "last", "sub/b.txt": "last" }, { op: "test" });
    const left = names(root).filter((n) => n !== "out");
    assert.deepEqual(left, [Deno.readLinkSync(dir)], `only the current save is left: ${left}`);
  });
});

Deno.test("writeDirAtomic: a later save removes leftovers of ended saves, never a running one's or a linked one", async () => {
  await withTempDir(async (root) => {
    const dir = `${root}/out`;
    await writeDirAtomic(dir, { "a.txt": "1" }, { op: "test" });
    const now = Date.now();
    const dead = 2 ** 22 + 5; // above Linux's largest pid (pid_max ≤ 2^22): no such process
    const tag = (pid: number, time = now, host?: string) => _saveTagForTesting(pid, time, host);
    const folder = (name: string) => {
      Deno.mkdirSync(`${root}/${name}`);
      Deno.writeTextFileSync(`${root}/${name}/a.txt`, "partial");
    };
    const gone = [
      `.out.save-${tag(dead)}`, // killed mid-save on this machine
      `.other.save-${(now - STALE_SAVE_AGE_MS - 60_000).toString(36)}-old1`, // older tag form, past the age
      `.out.old-${tag(dead)}`, // moved aside by a killed save; out exists again
    ];
    const kept = [
      `.out.save-${tag(Deno.pid)}`, // a save of this very process, still running
      `.out.save-${tag(dead, now, "zz9")}`, // another machine's: its pid cannot be asked, and it is recent
      `.other.save-${now.toString(36)}-new1`, // older tag form, recent
      `.gone.old-${tag(dead)}`, // the only copy of a save whose switch was cut off: gone does not exist
      `.kept.save-${tag(dead)}`, // a whole save of an ended process that kept points at
    ];
    // A save killed between making its link temporary and renaming it over its target leaves both the
    // link and the folder it names: the stale link must not protect that folder (the CI flake of
    // "a writer killed mid-save leaves one whole save").
    const linkedByStaleTemp = `.out.save-${tag(dead + 1)}`;
    gone.push(linkedByStaleTemp, `.out.link-${tag(dead + 1)}`);
    for (const n of [...gone.filter((n) => !n.includes(".link-")), ...kept]) folder(n);
    Deno.symlinkSync(linkedByStaleTemp, `${root}/.out.link-${tag(dead + 1)}`);
    Deno.symlinkSync(`.kept.save-${tag(dead)}`, `${root}/kept`);
    await writeDirAtomic(dir, { "a.txt": "2" }, { op: "test" });
    const left = names(root);
    for (const n of gone) assert.ok(!left.includes(n), `${n} should be removed: ${left}`);
    for (const n of kept) assert.ok(left.includes(n), `${n} should be kept: ${left}`);
    assert.equal(Deno.readTextFileSync(`${root}/kept/a.txt`), "partial");
    assert.equal(Deno.readTextFileSync(`${dir}/a.txt`), "2");
    // The current save of out and the two running or unaskable saves kept above.
    const saves = left.filter((n) => n.startsWith(".out.save-"));
    assert.equal(saves.length, 3, `${saves}`);
    assert.ok(saves.includes(Deno.readLinkSync(dir)));
  });
});
