/**
 * Builds the npm package in `npm/`: one ESM bundle of `mod.ts` from esbuild plus `.d.ts` files from
 * `tsc --emitDeclarationOnly`, a package.json whose exports map serves `import` and `require()` alike,
 * the LICENSE and the package's own README (`scripts/npm_package_README.md`). This is what dnt would do;
 * dnt is published on JSR only, which these machines cannot reach.
 *
 * The bundle must load unbundled in a browser, so the build fails when it would keep a static import
 * of anything (a bare package name or a `node:` module); Node's file access is reached through a
 * computed dynamic import only where a path is given.
 *
 * Usage: `deno run -A scripts/build_npm.ts [--out DIR]`.
 */
const root = new URL("../", import.meta.url).pathname;
const outArg = Deno.args.indexOf("--out");
const out = outArg >= 0 ? Deno.args[outArg + 1] : `${root}npm`;
const bin = (name: string) => `${root}node_modules/.bin/${name}`;

/** The files under `dir` whose names end with `suffix`. */
async function* walk(dir: string, suffix: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) yield* walk(path, suffix);
    else if (path.endsWith(suffix)) yield path;
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  const p = await new Deno.Command(cmd, { args, cwd: root, stdout: "inherit", stderr: "inherit" }).output();
  if (!p.success) throw new Error(`build_npm: ${cmd} ${args.join(" ")} failed with exit code ${p.code}`);
}

/** The parts of esbuild's metafile read here. */
interface Metafile {
  outputs: Record<string, { imports: { path: string; kind: string; external?: boolean }[] }>;
}

/**
 * Bundles `entry` (a path relative to the repository root) into one self-contained ES module at `outfile`
 * with the WGSL sources embedded, as a browser loads it with no bundler; the source map keeps names and
 * positions for stack traces but not the sources themselves, which would be most of the package. Fails
 * when the bundle would keep a static import of anything (a bare package name or a `node:` module).
 * Shared with examples/browser/serve.ts, which serves the same bundle to its page.
 */
export async function bundleForBrowser(entry: string, outfile: string): Promise<void> {
  const metafilePath = `${outfile}.meta.json`;
  await run(bin("esbuild"), [
    entry,
    "--bundle",
    "--format=esm",
    "--platform=neutral",
    "--target=es2022",
    "--external:node:*",
    "--sourcemap",
    "--sources-content=false",
    `--metafile=${metafilePath}`,
    `--outfile=${outfile}`,
    "--log-level=warning",
  ]);
  const meta = JSON.parse(await Deno.readTextFile(metafilePath)) as Metafile;
  await Deno.remove(metafilePath);
  for (const [file, output] of Object.entries(meta.outputs)) {
    const kept = output.imports.filter((i) => i.external);
    if (kept.length > 0) {
      throw new Error(
        `build_npm: ${file} would keep imports a browser cannot resolve: ` +
          kept.map((i) => `${i.kind} ${i.path}`).join(", "),
      );
    }
  }
}

if (import.meta.main) await buildPackage();

/** Writes the whole package into `out`. */
async function buildPackage(): Promise<void> {
  const started = performance.now();
  await Deno.remove(out, { recursive: true }).catch(() => {});
  await Deno.mkdir(`${out}/esm`, { recursive: true });
  await bundleForBrowser("mod.ts", `${out}/esm/mod.js`);

  const tsconfig = {
    compilerOptions: {
      target: "ES2022",
      module: "ESNext",
      moduleResolution: "Bundler",
      lib: ["ES2023", "ESNext.Disposable", "DOM"],
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

  /**
   * The declarations name WebGPU's types (`GPU`, `GPUAdapter`...) and `Symbol.dispose`; a consumer gets
   * them from these references rather than from its own `types` and `lib` settings, which a strict project
   * may leave empty (`types: []`) or at an older ECMAScript.
   */
  const references = '/// <reference types="@webgpu/types" />\n/// <reference lib="esnext.disposable" />\n';
  for await (const file of walk(`${out}/types`, ".d.ts")) {
    const text = await Deno.readTextFile(file);
    // tsc keeps `.ts` specifiers in declarations; consumers resolve `.js` ones to the `.d.ts` next to them.
    const rewritten = text.replace(/(from\s+|import\()(["'])(\.{1,2}\/[^"']+)\.ts\2/g, "$1$2$3.js$2");
    await Deno.writeTextFile(file, references + rewritten);
  }

  const pkg = JSON.parse(await Deno.readTextFile(`${root}package.json`));
  const deno = JSON.parse(await Deno.readTextFile(`${root}deno.json`));
  const webgpuTypes = pkg.devDependencies["@webgpu/types"];
  if (typeof webgpuTypes !== "string") throw new Error("build_npm: package.json lacks @webgpu/types");
  const npmPkg = {
    name: pkg.name,
    version: deno.version,
    description: pkg.description,
    keywords: pkg.keywords,
    homepage: pkg.homepage,
    repository: pkg.repository,
    bugs: pkg.bugs,
    license: pkg.license,
    type: "module",
    main: "./esm/mod.js",
    types: "./types/mod.d.ts",
    // `default` serves require(): Node 20.19+ loads an ES module synchronously when it has no top-level
    // await, which the bundle never has.
    exports: {
      ".": { types: "./types/mod.d.ts", import: "./esm/mod.js", default: "./esm/mod.js" },
      "./package.json": "./package.json",
    },
    sideEffects: false,
    files: ["esm", "types", "README.md", "LICENSE"],
    engines: { node: ">=20.19" },
    dependencies: { "@webgpu/types": webgpuTypes },
  };
  for (const [key, value] of Object.entries(npmPkg)) {
    if (value === undefined) throw new Error(`build_npm: package.json lacks "${key}"`);
  }
  await Deno.writeTextFile(`${out}/package.json`, JSON.stringify(npmPkg, null, 2) + "\n");
  await Deno.copyFile(`${root}LICENSE`, `${out}/LICENSE`);
  await Deno.copyFile(`${root}scripts/npm_package_README.md`, `${out}/README.md`);
  console.log(`build_npm: wrote ${out} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
}
