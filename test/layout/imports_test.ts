/**
 * The import rule of the developers' guide, checked on the source: imports only run down the layers
 * (src/core → src/io → src/backend → src/tensor → src/nn → src/peft and src/models side by side →
 * src/optim → src/train → mod.ts, then scripts/ and bench/), with no cycle among files nor among the
 * top-level folders. Every static `import`, `import type`, `export ... from` and literal dynamic
 * `import("...")` counts; TypeScript's own pre-processor reads them, so imports in comments and strings
 * do not.
 */
import assert from "node:assert/strict";
import ts from "typescript";

const root = new URL("../../", import.meta.url).pathname;

/** Repository-relative paths of the .ts files the rule covers. */
function sourceFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(`${root}${dir}`)) {
      const path = `${dir}/${e.name}`;
      if (e.isDirectory) walk(path);
      else if (e.isFile && path.endsWith(".ts")) out.push(path);
    }
  };
  for (const dir of ["src", "scripts", "bench"]) walk(dir);
  out.push("mod.ts");
  return out.sort();
}

/** Normalises `a/b/../c` to `a/c`; null when the path leaves the repository. */
function normalise(path: string): string | null {
  const parts: string[] = [];
  for (const p of path.split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") {
      if (parts.length === 0) return null;
      parts.pop();
    } else parts.push(p);
  }
  return parts.join("/");
}

/** Each file's relative imports, resolved to repository-relative paths (packages are not ours). */
function importGraph(files: readonly string[]): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const text = Deno.readTextFileSync(`${root}${file}`);
    const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : "";
    const targets = ts.preProcessFile(text, true, true).importedFiles
      .map((f) => f.fileName)
      .filter((spec) => spec.startsWith("./") || spec.startsWith("../"))
      .map((spec) => normalise(`${dir}/${spec}`))
      .filter((t): t is string => t !== null);
    graph.set(file, [...new Set(targets)]);
  }
  return graph;
}

/** The folder node of a file: src/<top> for src's folders, the file itself directly in src/, else its top dir. */
function folderOf(file: string): string {
  const parts = file.split("/");
  if (parts[0] === "src") return parts.length > 2 ? `src/${parts[1]}` : file;
  return parts.length > 1 ? parts[0] : file;
}

/** The graph among folder nodes: a folder imports what its files import (edges within a folder dropped). */
function folderGraph(files: Map<string, string[]>): Map<string, string[]> {
  const graph = new Map<string, Set<string>>();
  for (const [file, targets] of files) {
    const from = folderOf(file);
    if (!graph.has(from)) graph.set(from, new Set());
    for (const t of targets) {
      if (!files.has(t)) continue;
      const to = folderOf(t);
      if (to !== from) graph.get(from)!.add(to);
    }
  }
  return new Map([...graph].map(([k, v]) => [k, [...v].sort()]));
}

/** One cycle of `graph` as a path that ends where it starts, or null; nodes outside the graph are ignored. */
export function findCycle(graph: ReadonlyMap<string, readonly string[]>): string[] | null {
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (node: string): string[] | null => {
    state.set(node, "open");
    path.push(node);
    for (const next of graph.get(node) ?? []) {
      if (!graph.has(next)) continue;
      const s = state.get(next);
      if (s === "open") return [...path.slice(path.indexOf(next)), next];
      if (s === undefined) {
        const found = visit(next);
        if (found) return found;
      }
    }
    path.pop();
    state.set(node, "done");
    return null;
  };
  for (const node of [...graph.keys()].sort()) {
    if (state.has(node)) continue;
    const found = visit(node);
    if (found) return found;
  }
  return null;
}

/**
 * Layers from the bottom: a folder may import only folders of lower rank. peft and models share a rank,
 * so neither imports the other; scripts and bench share the top one.
 */
const LAYER_RANK: Readonly<Record<string, number>> = {
  "src/core": 0,
  "src/io": 1,
  "src/backend": 2,
  "src/tokenizers": 2, // imports only src/core and src/io (and the tokenizer/Jinja packages)
  "src/tensor": 3,
  "src/nn": 4,
  "src/peft": 5,
  "src/models": 5,
  "src/optim": 6,
  "src/text": 6, // text in, text out: imports src/models and src/tokenizers (neither imports it)
  "src/train": 7,
  "mod.ts": 8,
  "scripts": 9,
  "bench": 9,
};

/** Imports that break the layer order, as "from -> to" lines (a folder missing from the order is one too). */
export function layerViolations(folders: ReadonlyMap<string, readonly string[]>): string[] {
  const bad: string[] = [];
  for (const [from, targets] of folders) {
    if (!(from in LAYER_RANK)) {
      bad.push(`${from} is in no layer: add it to LAYER_RANK in test/layout/imports_test.ts`);
      continue;
    }
    for (const to of targets) {
      if (!(to in LAYER_RANK)) continue; // reported as its own node
      if (LAYER_RANK[to] >= LAYER_RANK[from]) bad.push(`${from} -> ${to}`);
    }
  }
  return bad.sort();
}

const files = importGraph(sourceFiles());
const folders = folderGraph(files);

/** "a -> b" lines of the file imports that make up `folderEdge` (from folder, to folder). */
function filesBehind(from: string, to: string): string[] {
  return [...files].flatMap(([f, ts]) =>
    folderOf(f) === from
      ? ts.filter((t) => files.has(t) && folderOf(t) === to).map((t) => `${f} -> ${t}`)
      : []
  );
}

Deno.test("the walk sees every layer and the imports of this repository", () => {
  for (
    const folder of ["src/core", "src/backend", "src/tensor", "src/nn", "src/peft", "src/models", "mod.ts"]
  ) {
    assert.ok(folders.has(folder), `no files found for ${folder}`);
  }
  // Cheap sanity checks that the pre-processor found imports at all: mod.ts re-exports the tensor layer.
  assert.ok(files.get("mod.ts")!.includes("src/tensor/mod.ts"), `mod.ts imports: ${files.get("mod.ts")}`);
});

Deno.test("the cycle finder reports a cycle as a closed path and finds none in a chain", () => {
  assert.deepEqual(findCycle(new Map([["a", ["b"]], ["b", ["c"]], ["c", []]])), null);
  assert.deepEqual(findCycle(new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]]])), ["a", "b", "c", "a"]);
  assert.deepEqual(findCycle(new Map([["a", ["a"]]])), ["a", "a"]);
  assert.deepEqual(
    layerViolations(new Map([["src/core", ["src/io"]], ["src/peft", ["src/models"]], ["src/x", []]])),
    [
      "src/core -> src/io",
      "src/peft -> src/models",
      "src/x is in no layer: add it to LAYER_RANK in test/layout/imports_test.ts",
    ],
  );
});

Deno.test("no import cycle among the files of src/, mod.ts, scripts/ and bench/", () => {
  const cycle = findCycle(files);
  assert.deepEqual(cycle, null, `import cycle: ${cycle?.join(" -> ")}`);
});

Deno.test("no import cycle among the top-level folders of src/, mod.ts, scripts/ and bench/", () => {
  const cycle = findCycle(folders);
  const detail = cycle?.slice(1).map((to, i) => filesBehind(cycle[i], to).join("; ")).join("\n  ");
  assert.deepEqual(cycle, null, `folder cycle: ${cycle?.join(" -> ")}\n  ${detail}`);
});

Deno.test("imports only run down the layers (peft and models never import each other)", () => {
  const bad = layerViolations(folders);
  const detail = bad.map((line) => {
    const [from, to] = line.split(" -> ");
    return to === undefined ? line : `${line}: ${filesBehind(from, to).join("; ")}`;
  });
  assert.deepEqual(detail, [], `imports that run up or sideways:\n${detail.join("\n")}`);
});

Deno.test("src/core imports nothing outside src/core", () => {
  const outside = [...files].flatMap(([f, ts]) =>
    f.startsWith("src/core/") ? ts.filter((t) => !t.startsWith("src/core/")).map((t) => `${f} -> ${t}`) : []
  );
  assert.deepEqual(outside, []);
});

Deno.test("outside src/tensor the tensor layer is imported through its entry, src/tensor/mod.ts", () => {
  // The entry installs Tensor's op methods (src/tensor/methods.ts); importing tensor.ts or ops.ts alone
  // would give tensors without them.
  const direct = [...files].flatMap(([f, ts]) =>
    f.startsWith("src/tensor/")
      ? []
      : ts.filter((t) => t.startsWith("src/tensor/") && t !== "src/tensor/mod.ts").map((t) => `${f} -> ${t}`)
  );
  assert.deepEqual(direct, []);
});
