/**
 * Child process for write_dir_test.ts: saves numbered folders into the directory given as its argument,
 * forever, until the parent kills it. Each save's two files carry the same number, so a reader can tell
 * a mixed save from a whole one.
 */
import { writeDirAtomic } from "../../src/io/fs.ts";

const dir = Deno.args[0];
const filler = "x".repeat(200_000); // big enough that a kill often lands mid-write
for (let n = 1;; n++) {
  await writeDirAtomic(dir, { "a.txt": `${n}`, "sub/b.txt": `${n}\n${filler}` }, { op: "childSave" });
  if (n === 1) console.log("saved");
}
