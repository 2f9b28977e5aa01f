/**
 * Every ```ts block of README.md runs as written, each on its own, with `deno run -A` from the repository
 * root (so `./mod.ts` resolves as it does for a reader who copies the block into a file there), exits 0,
 * and leaves nothing behind in the repository. All blocks together also type-check, so a renamed export
 * or a changed signature breaks this test rather than the reader's first try.
 */
import assert from "node:assert/strict";

const root = new URL("../", import.meta.url).pathname;
const readme = Deno.readTextFileSync(`${root}README.md`);

/** One fenced ```ts block: where it starts in README.md and its source. */
interface Block {
  /** 1-based README.md line of the opening fence. */
  line: number;
  /** Its position among the ```ts blocks, from 0. */
  index: number;
  source: string;
}

/** The ```ts blocks of a Markdown text, in order (other fences, ```js and ```sh included, are skipped). */
function tsBlocks(markdown: string): Block[] {
  const lines = markdown.split("\n");
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== "```ts") continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i].trim() !== "```"; i++) body.push(lines[i]);
    if (i === lines.length) {
      throw new Error(`README.md: the \`\`\`ts block at line ${start + 1} is not closed`);
    }
    blocks.push({ line: start + 1, index: blocks.length, source: body.join("\n") + "\n" });
  }
  return blocks;
}

/** How a failing block is named: its index, README line and first line after its imports. */
function label(b: Block): string {
  const lines = b.source.split("\n");
  const lastImport = lines.findLastIndex((l) => /^import\b|\bfrom "[^"]+";$/.test(l));
  const first = lines.slice(lastImport + 1).find((l) => l.trim() !== "") ?? lines[0];
  return `README \`\`\`ts block ${b.index} (line ${b.line}: ${
    first.length > 70 ? first.slice(0, 67) + "..." : first
  })`;
}

/** The repository root's top-level entries, to see whether a block wrote there. */
function rootEntries(): string[] {
  return [...Deno.readDirSync(root)].map((e) => e.name).sort();
}

/** Writes `sources` as files in the repository root, runs `fn` with their names, and always removes them. */
async function withBlockFiles<T>(sources: string[], fn: (names: string[]) => Promise<T>): Promise<T> {
  const tag = crypto.randomUUID().slice(0, 8);
  const names = sources.map((_, i) => `_readme_block_${i}_${tag}.ts`);
  try {
    sources.forEach((s, i) => Deno.writeTextFileSync(`${root}${names[i]}`, s));
    return await fn(names);
  } finally {
    for (const n of names) Deno.removeSync(`${root}${n}`);
  }
}

/** Runs `deno <args>` in the repository root; returns its exit code and output. */
async function deno(args: string[]): Promise<{ code: number; output: string }> {
  const p = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: p.code, output: dec.decode(p.stdout) + dec.decode(p.stderr) };
}

const blocks = tsBlocks(readme);

Deno.test("README.md has ```ts blocks, each importing ./mod.ts", () => {
  assert(blocks.length >= 4, `expected the README's examples as \`\`\`ts blocks, found ${blocks.length}`);
  for (const b of blocks) {
    assert(/from "\.\/mod\.ts"/.test(b.source), `${label(b)} does not import "./mod.ts"`);
  }
});

for (const b of blocks) {
  Deno.test(`${label(b)} runs with deno run -A from the repository root`, async () => {
    const before = rootEntries();
    const { code, output } = await withBlockFiles([b.source], ([name]) => deno(["run", "-A", name]));
    assert.equal(code, 0, `${label(b)} exited with code ${code}:\n${output}`);
    const after = rootEntries().filter((n) => !n.startsWith("_readme_block_"));
    assert.deepEqual(after, before, `${label(b)} wrote into the repository root (use Deno.makeTempDir)`);
  });
}

Deno.test("README ```ts blocks type-check against mod.ts", async () => {
  const { code, output } = await withBlockFiles(
    blocks.map((b) => b.source),
    (names) => deno(["check", "--quiet", ...names]),
  );
  const where = blocks.map((b, i) => `_readme_block_${i}_*.ts = ${label(b)}`).join("\n");
  assert.equal(code, 0, `deno check failed on the README's blocks:\n${output}\n${where}`);
});
