/**
 * Builds the npm package in `npm/`: one ESM bundle from esbuild plus `.d.ts` files from
 * `tsc --emitDeclarationOnly` and a package.json with an exports map — what dnt would do, which
 * JSR-only hosting keeps out of reach. Usage: `deno run -A scripts/build_npm.ts [--out DIR]`.
 */
const root = new URL("../", import.meta.url).pathname;
const outArg = Deno.args.indexOf("--out");
const out = outArg >= 0 ? Deno.args[outArg + 1] : `${root}npm`;
const bin = (name: string) => `${root}node_modules/.bin/${name}`;

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) yield* walk(path);
    else if (path.endsWith(".d.ts")) yield path;
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  const p = await new Deno.Command(cmd, { args, cwd: root, stdout: "inherit", stderr: "inherit" }).output();
  if (!p.success) throw new Error(`build_npm: ${cmd} ${args.join(" ")} failed with exit code ${p.code}`);
}

const started = performance.now();
await Deno.remove(out, { recursive: true }).catch(() => {});
await Deno.mkdir(`${out}/esm`, { recursive: true });

// One self-contained ESM file; no runtime dependencies. `node:*` imports stay external and are only
// reached through dynamic import on runtimes that have them.
await run(bin("esbuild"), [
  "mod.ts",
  "--bundle",
  "--format=esm",
  "--platform=neutral",
  "--target=es2022",
  "--external:node:*",
  "--sourcemap",
  `--outfile=${out}/esm/mod.js`,
  "--log-level=warning",
]);

const tsconfig = {
  compilerOptions: {
    target: "ES2022",
    module: "ESNext",
    moduleResolution: "Bundler",
    lib: ["ES2023", "DOM"],
    typeRoots: [`${root}node_modules/@types`, `${root}node_modules/@webgpu`],
    types: ["types", "node"],
    declaration: true,
    emitDeclarationOnly: true,
    allowImportingTsExtensions: true,
    rewriteRelativeImportExtensions: true,
    strict: true,
    skipLibCheck: true,
    outDir: `${out}/types`,
    rootDir: root,
  },
  files: [`${root}mod.ts`],
};
const tsconfigPath = `${out}/tsconfig.build.json`;
await Deno.writeTextFile(tsconfigPath, JSON.stringify(tsconfig, null, 2));
await run(bin("tsc"), ["-p", tsconfigPath]);
await Deno.remove(tsconfigPath);
// tsc keeps `.ts` specifiers in declarations; consumers resolve `.js` ones to the `.d.ts` next to them.
for await (const file of walk(`${out}/types`)) {
  const text = await Deno.readTextFile(file);
  await Deno.writeTextFile(
    file,
    text.replace(/(from\s+|import\()(["'])(\.{1,2}\/[^"']+)\.ts\2/g, "$1$2$3.js$2"),
  );
}

const pkg = JSON.parse(await Deno.readTextFile(`${root}package.json`));
const deno = JSON.parse(await Deno.readTextFile(`${root}deno.json`));
const npmPkg = {
  name: pkg.name,
  version: deno.version,
  description: pkg.description,
  license: pkg.license,
  type: "module",
  main: "./esm/mod.js",
  types: "./types/mod.d.ts",
  exports: { ".": { types: "./types/mod.d.ts", import: "./esm/mod.js" } },
  sideEffects: false,
  files: ["esm", "types", "README.md"],
  engines: { node: ">=20" },
};
await Deno.writeTextFile(`${out}/package.json`, JSON.stringify(npmPkg, null, 2) + "\n");
await Deno.copyFile(`${root}README.md`, `${out}/README.md`).catch(() => {});
console.log(`build_npm: wrote ${out} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
