/**
 * The built npm package imports and runs a LoRA forward/backward under Node and under Bun, giving the
 * same numbers as the source tree under Deno.
 */
import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;
const outDir = await Deno.makeTempDir({ prefix: "lora-npm-" });

async function run(cmd: string, args: string[]): Promise<string> {
  const p = await new Deno.Command(cmd, { args, cwd: root, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(p.stdout);
  if (!p.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${new TextDecoder().decode(p.stderr)}`);
  return text;
}

let built = false;
async function build(): Promise<string> {
  if (!built) {
    await run(Deno.execPath(), ["run", "-A", "scripts/build_npm.ts", "--out", outDir]);
    built = true;
  }
  return `${outDir}/esm/mod.js`;
}

const reference = JSON.parse(
  await run(Deno.execPath(), ["run", "-A", "test/npm/smoke.mjs", `${root}mod.ts`]),
);

for (const [runtime, cmd] of [["Node", "node"], ["Bun", `${root}node_modules/.bin/bun`]] as const) {
  Deno.test(`npm package: LoRA forward/backward under ${runtime} matches Deno on the source`, async () => {
    const bundle = await build();
    const got = JSON.parse(await run(cmd, ["test/npm/smoke.mjs", bundle]));
    assert.equal(got.count, 1);
    assert.equal(got.loss, reference.loss);
    assert.deepEqual(got.gradA, reference.gradA);
    assert.deepEqual(got.gradB, reference.gradB);
    assert.ok(got.gradA.some((v: number) => v !== 0));
  });
}

Deno.test("npm package: declarations and exports map are present", async () => {
  await build();
  const pkg = JSON.parse(await Deno.readTextFile(`${outDir}/package.json`));
  assert.equal(pkg.type, "module");
  assert.equal(pkg.exports["."].import, "./esm/mod.js");
  const dts = await Deno.readTextFile(`${outDir}/types/mod.d.ts`);
  assert.match(dts, /export \{[^}]*LinearLoRA/);
  assert.doesNotMatch(dts, /from "\.[^"]*\.ts"/);
});
