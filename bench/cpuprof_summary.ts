/**
 * Summarises a V8 `.cpuprofile` (from `deno run --cpu-prof`): self time per function, slowest first.
 *
 * Usage: deno run -A bench/cpuprof_summary.ts PROFILE.cpuprofile [--top 40]
 * @module
 */
interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

const [path] = Deno.args;
const i = Deno.args.indexOf("--top");
const top = i >= 0 ? Number(Deno.args[i + 1]) : 40;
const prof = JSON.parse(await Deno.readTextFile(path)) as {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
};
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const self = new Map<string, number>();
let total = 0;
prof.samples.forEach((id, k) => {
  const n = byId.get(id)!;
  const f = n.callFrame;
  const file = f.url.replace(/^.*\/(src|bench|ext)\//, "$1/");
  const key = `${f.functionName || "(anonymous)"} ${file}:${f.lineNumber + 1}`;
  const us = prof.timeDeltas[k] ?? 0;
  self.set(key, (self.get(key) ?? 0) + us);
  total += us;
});
const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
console.log(`${(total / 1000).toFixed(1)} ms sampled`);
for (const [key, us] of rows) {
  console.log(
    `${(us / 1000).toFixed(1).padStart(9)} ms ${(100 * us / total).toFixed(1).padStart(5)}%  ${key}`,
  );
}
