/**
 * Range reads of files (openFileReader, what the checkpoint loader streams through): on this runtime
 * (Deno) and through the Node implementation (node:fs/promises, which Deno provides), any range reads the
 * file's bytes, a range past the end is a RangeError naming the file, and close is idempotent; a test
 * filesystem without openRead gets a reader over its readFile bytes.
 */
import assert from "node:assert/strict";
import * as nodeFs from "node:fs/promises";
import {
  _nodeOpsForTesting,
  _setFsForTesting,
  bytesRangeReader,
  type FileRangeReader,
  openFileReader,
} from "../../src/io/fs.ts";

const PATH = new URL("../fixtures/llama-tiny-lora/base/model.safetensors", import.meta.url).pathname;
const BYTES = Deno.readFileSync(PATH);

async function check(name: string, open: () => Promise<FileRangeReader>): Promise<void> {
  const r = await open();
  try {
    assert.equal(r.size, BYTES.length, name);
    for (const [at, n] of [[0, 8], [3, 1000], [BYTES.length - 17, 17], [12345, 0]]) {
      const into = new Uint8Array(n);
      await r.read(into, at);
      assert.deepEqual(into, BYTES.subarray(at, at + n), `${name} [${at}, ${at + n}]`);
    }
    await assert.rejects(
      () => r.read(new Uint8Array(8), BYTES.length - 4),
      (e) => e instanceof RangeError && e.message.includes("lie outside"),
    );
  } finally {
    r.close();
    r.close();
  }
}

Deno.test("openFileReader reads any range of a file (Deno)", () => check("deno", () => openFileReader(PATH)));

Deno.test("the Node implementation reads the same ranges (node:fs/promises)", () =>
  check("node", () => _nodeOpsForTesting(nodeFs).openRead(PATH)));

Deno.test("bytesRangeReader and a test filesystem without openRead read the same ranges", async () => {
  await check("bytes", () => Promise.resolve(bytesRangeReader(BYTES, "bytes")));
  _setFsForTesting({
    readFile: (p) => Deno.readFile(p),
    writeFile: () => Promise.reject(new Error("unused")),
    rename: () => Promise.reject(new Error("unused")),
    mkdirp: () => Promise.reject(new Error("unused")),
    remove: () => Promise.reject(new Error("unused")),
    kind: () => Promise.resolve("file"),
  });
  try {
    await check("override", () => openFileReader(PATH));
  } finally {
    _setFsForTesting(null);
  }
});
