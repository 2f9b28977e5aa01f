/**
 * The JSR package: `deno publish --dry-run` passes (license, no slow types in the public API) and would
 * upload the library only: never the tests, fixtures, bench, examples with their demo model, or the WGSL
 * sources that `src/backend/webgpu/wgsl_sources.ts` already embeds.
 */
import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;

Deno.test("JSR: deno publish --dry-run passes and publishes the library alone", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${root}deno.json`));
  assert.equal(config.license, "Apache-2.0");
  // --allow-dirty: a working tree with uncommitted edits is still worth checking. --no-check skips the
  // type check `deno task check` already does (30 s here) but keeps JSR's slow-types check.
  const p = await new Deno.Command(Deno.execPath(), {
    args: ["publish", "--dry-run", "--allow-dirty", "--no-check"],
    cwd: root,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(p.stdout) + new TextDecoder().decode(p.stderr);
  assert.ok(p.success, text);
  assert.match(text, /Dry run complete/);
  assert.doesNotMatch(text, /^error/m);
  const files = [...text.matchAll(/^\s*file:\/\/(\S+)/gm)].map((m) => m[1].slice(root.length));
  assert.ok(files.length > 10, `expected the file list in:\n${text}`);
  for (const wanted of ["mod.ts", "LICENSE", "README.md", "deno.json"]) {
    assert.ok(files.includes(wanted), `${wanted} is published`);
  }
  assert.ok(files.includes("src/backend/webgpu/wgsl_sources.ts"), "the embedded WGSL is published");
  const stray = files.filter((f) =>
    !(f.startsWith("src/") || ["mod.ts", "LICENSE", "README.md", "deno.json"].includes(f))
  );
  assert.deepEqual(stray, [], "only the library is published");
  assert.deepEqual(files.filter((f) => f.endsWith("_test.ts")), []);
});
