/** The demo's data handling: reading JSONL and text files, completion-only labels, padding, splits. */
import assert from "node:assert/strict";
import { UsageError } from "../../../examples/demo/cli.ts";
import {
  completionIds,
  consecutiveWindows,
  encodePair,
  padBatch,
  parseJsonl,
  promptIds,
  randomWindow,
  readDataFile,
  splitHeldOut,
} from "../../../examples/demo/data.ts";
import { SeededRandom } from "../../../examples/demo/rng.ts";
import { ByteTokenizer } from "../../../examples/demo/tokenizer.ts";

const bytes = (s: string) => Array.from(new TextEncoder().encode(s));

Deno.test("parseJsonl: reads prompt/completion objects and skips blank lines", () => {
  const pairs = parseJsonl(
    '{"prompt": "a", "completion": "b"}\n\n  {"completion": "d", "prompt": "c", "x": 1}\n',
    "f",
  );
  assert.deepEqual(pairs, [{ prompt: "a", completion: "b" }, { prompt: "c", completion: "d" }]);
});

Deno.test("parseJsonl: each malformed line is a UsageError naming its line number", () => {
  const cases: [string, RegExp][] = [
    ['{"prompt": "a", "completion": "b"}\n{nope', /f line 2 is not valid JSON/],
    ["[1, 2]", /f line 1 must be a JSON object/],
    ['{"prompt": "a"}', /f line 1 needs string fields "prompt" and "completion"/],
    ['{"prompt": "a", "completion": 5}', /line 1 needs string fields/],
    ['{"prompt": "a", "completion": ""}', /line 1 has an empty completion/],
    ["\n\n", /f holds no prompt\/completion lines/],
  ];
  for (const [text, message] of cases) {
    assert.throws(
      () => parseJsonl(text, "f"),
      (e: Error) => e instanceof UsageError && message.test(e.message),
      text,
    );
  }
});

Deno.test("readDataFile: .jsonl or a leading JSON object means pairs, anything else plain text", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/a.jsonl`, '{"prompt": "p", "completion": "c"}\n');
    await Deno.writeTextFile(`${dir}/b.txt`, '\n{"prompt": "p", "completion": "c"}\n');
    await Deno.writeTextFile(`${dir}/c.txt`, "Once upon a time {there} was text.\n");
    await Deno.writeTextFile(`${dir}/empty.txt`, "  \n");
    assert.deepEqual(await readDataFile(`${dir}/a.jsonl`), {
      kind: "pairs",
      pairs: [{ prompt: "p", completion: "c" }],
    });
    assert.equal((await readDataFile(`${dir}/b.txt`)).kind, "pairs");
    assert.deepEqual(await readDataFile(`${dir}/c.txt`), {
      kind: "text",
      text: "Once upon a time {there} was text.\n",
    });
    await assert.rejects(() => readDataFile(`${dir}/empty.txt`), /--data .*empty\.txt is empty/);
    await assert.rejects(
      () => readDataFile(`${dir}/missing.txt`),
      (e: Error) => e instanceof UsageError && /no such file/.test(e.message),
    );
    await assert.rejects(() => readDataFile(dir), /is a directory/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("encodePair: labels only the completion and EOS; prompt and completion split back out", () => {
  const tok = new ByteTokenizer(10);
  const s = encodePair(tok, { prompt: "12+2=", completion: "34" });
  assert.deepEqual(s.ids, bytes("12+2=34\n"));
  assert.deepEqual(s.labels, [...bytes("12+2=").map(() => -100), ...bytes("34\n")]);
  assert.deepEqual(promptIds(s), bytes("12+2="));
  assert.deepEqual(completionIds(s), bytes("34\n"));
  // A completion that already ends with EOS gets no second one.
  assert.deepEqual(encodePair(tok, { prompt: "x", completion: "y\n" }).ids, bytes("xy\n"));
  // Without EOS the completion is trained as is.
  assert.deepEqual(encodePair(new ByteTokenizer(null), { prompt: "x", completion: "y" }).ids, bytes("xy"));
});

Deno.test("padBatch: right-pads ids, masks the padding and ignores it in the labels", () => {
  const b = padBatch([{ ids: [5, 6, 7], labels: [-100, 6, 7] }, { ids: [8], labels: [8] }], 0);
  assert.deepEqual(b.inputIds, [[5, 6, 7], [8, 0, 0]]);
  assert.deepEqual(b.labels, [[-100, 6, 7], [8, -100, -100]]);
  assert.deepEqual(b.attentionMask, [[1, 1, 1], [1, 0, 0]]);
});

Deno.test("randomWindow and consecutiveWindows: windows of the text, trained on every token", () => {
  const ids = Array.from({ length: 50 }, (_, i) => i);
  const rng = new SeededRandom(1);
  for (let i = 0; i < 20; i++) {
    const w = randomWindow(ids, 8, rng);
    assert.equal(w.ids.length, 8);
    for (let j = 1; j < 8; j++) assert.equal(w.ids[j], w.ids[j - 1] + 1);
    assert.deepEqual(w.labels, w.ids);
  }
  assert.deepEqual(randomWindow([1, 2, 3], 8, rng).ids, [1, 2, 3]);
  const windows = consecutiveWindows(ids, 16, 10);
  assert.deepEqual(windows.map((w) => w.ids[0]), [0, 16, 32, 48]);
  assert.equal(windows[3].ids.length, 2);
  assert.equal(consecutiveWindows(ids, 16, 2).length, 2);
});

Deno.test("splitHeldOut: disjoint parts covering everything, at most a fifth and maxHeldOut held out", () => {
  const items = Array.from({ length: 100 }, (_, i) => i);
  const { train, heldOut } = splitHeldOut(items, 50, new SeededRandom(2));
  assert.equal(heldOut.length, 20);
  assert.deepEqual([...train, ...heldOut].sort((a, b) => a - b), items);
  assert.equal(splitHeldOut(items, 5, new SeededRandom(2)).heldOut.length, 5);
  assert.equal(splitHeldOut([1, 2, 3], 5, new SeededRandom(2)).heldOut.length, 1);
  assert.throws(() => splitHeldOut([1], 5, new SeededRandom(2)), /at least 2 examples/);
});
