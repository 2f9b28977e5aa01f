/**
 * The built npm package as a user installs it: `scripts/build_npm.ts` writes it into a temporary
 * consumer project's `node_modules/lora-webgpu`, beside the packages a user would add (`webgpu` on Node,
 * `bun-webgpu` on Bun, `@webgpu/types` as its dependency), and everything here imports it by name from
 * there: under Node and Bun, through `import` and `require()`, on the CPU and on WebGPU (SwiftShader's
 * Vulkan driver, which Dawn accepts where it rejects Mesa's lavapipe), from a strict TypeScript project,
 * and through the examples of the README it ships.
 */
import assert from "node:assert/strict";
import { registerBrowserTest } from "./browser.ts";

const root = new URL("../../", import.meta.url).pathname;
const bun = `${root}node_modules/.bin/bun`;
const tsc = `${root}node_modules/.bin/tsc`;
const esbuild = `${root}node_modules/.bin/esbuild`;
/** SwiftShader's Vulkan driver from Debian's `chromium` package (see the README's "Without a GPU"). */
const SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";

interface RunOptions {
  cwd?: string;
  env?: Record<string, string>;
}

/** A child that has not finished by then is stuck (Dawn can hang rather than fail); the longest take ~20 s. */
const CHILD_TIMEOUT_MS = 180_000;

/** Runs a command; its stdout, or an error with its stderr when it fails or hangs. */
async function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const p = await new Deno.Command(cmd, {
    args,
    cwd: opts.cwd ?? root,
    env: opts.env,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(CHILD_TIMEOUT_MS),
  }).output();
  const stdout = new TextDecoder().decode(p.stdout);
  if (!p.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${p.code}):\n${stdout}\n${new TextDecoder().decode(p.stderr)}`,
    );
  }
  return stdout;
}

const consumer = await Deno.makeTempDir({ prefix: "lora-npm-consumer-" });
globalThis.addEventListener("unload", () => Deno.removeSync(consumer, { recursive: true }));
const pkgDir = `${consumer}/node_modules/lora-webgpu`;
await run(Deno.execPath(), ["run", "-A", "scripts/build_npm.ts", "--out", pkgDir]);
await Deno.mkdir(`${consumer}/node_modules/@webgpu`, { recursive: true });
for (const name of ["@webgpu/types", "webgpu", "bun-webgpu"]) {
  await Deno.symlink(`${root}node_modules/${name}`, `${consumer}/node_modules/${name}`);
}
await Deno.writeTextFile(`${consumer}/package.json`, JSON.stringify({ type: "module", private: true }));
for (const script of ["smoke.mjs", "webgpu_smoke.mjs"]) {
  await Deno.copyFile(`${root}test/npm/${script}`, `${consumer}/${script}`);
}

/** WebGPU through Dawn needs SwiftShader here; CI installs it, elsewhere its absence skips those tests. */
const swiftshader = await Deno.stat(SWIFTSHADER_ICD).then(() => true, () => false);
if (!swiftshader) {
  const reason = `${SWIFTSHADER_ICD} is missing (apt-get install chromium)`;
  if (Deno.env.get("CI") === "true") throw new Error(`CI=true but ${reason}: Node/Bun WebGPU cannot run`);
  console.warn(`skipping the Node/Bun WebGPU tests: ${reason}`);
}
const dawnEnv = { VK_ICD_FILENAMES: SWIFTSHADER_ICD };

const reference = JSON.parse(
  await run(Deno.execPath(), ["run", "-A", "test/npm/smoke.mjs", `${root}mod.ts`]),
);

for (const [runtime, cmd] of [["Node", "node"], ["Bun", bun]] as const) {
  Deno.test(`npm package: LoRA forward/backward under ${runtime} matches Deno on the source`, async () => {
    const got = JSON.parse(await run(cmd, ["smoke.mjs", "lora-webgpu"], { cwd: consumer }));
    assert.equal(got.count, 1);
    assert.equal(got.loss, reference.loss);
    assert.deepEqual(got.gradA, reference.gradA);
    assert.deepEqual(got.gradB, reference.gradB);
    assert.ok(got.gradA.some((v: number) => v !== 0));
  });
}

/** Elementwise |a - b| <= atol + rtol·|b|, naming the first index that is not. */
function assertClose(got: number[], want: number[], what: string, rtol = 1e-4, atol = 1e-5): void {
  assert.equal(got.length, want.length, `${what}: length`);
  got.forEach((g, i) => {
    assert.ok(
      Math.abs(g - want[i]) <= atol + rtol * Math.abs(want[i]),
      `${what}[${i}]: WebGPU ${g}, CPU ${want[i]}`,
    );
  });
}

for (const [runtime, cmd] of [["Node + webgpu (Dawn)", "node"], ["Bun + bun-webgpu", bun]] as const) {
  Deno.test({
    name: `npm package: a LoRA training step on WebGPU under ${runtime} matches the CPU (SwiftShader)`,
    ignore: !swiftshader,
    fn: async () => {
      const out = await run(cmd, ["webgpu_smoke.mjs", "lora-webgpu"], { cwd: consumer, env: dawnEnv });
      const { kind, name, isSoftware, gpu, cpu } = JSON.parse(out);
      assert.equal(kind, "webgpu");
      assert.match(name, /SwiftShader/);
      assert.equal(isSoftware, true);
      assertClose([gpu.loss], [cpu.loss], "loss");
      assertClose(gpu.gradA, cpu.gradA, "lora_A grad");
      assertClose(gpu.gradB, cpu.gradB, "lora_B grad");
      assertClose([gpu.lossAfter], [cpu.lossAfter], "loss after the AdamW step");
      assertClose(gpu.loraAAfter, cpu.loraAAfter, "lora_A after the AdamW step");
      assert.ok(gpu.lossAfter < gpu.loss, `the step lowers the loss: ${gpu.loss} -> ${gpu.lossAfter}`);
    },
  });
}

/** Mesa's lavapipe alone (the Vulkan driver Deno's WebGPU runs on here), which Dawn rejects. */
const LAVAPIPE_ICD = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";
const hasLavapipe = await Deno.stat(LAVAPIPE_ICD).then(() => true, () => false);

for (
  const [runtime, cmd, gpu] of [
    ["Node + webgpu (Dawn)", "node", 'const { create } = await import("webgpu"); const gpu = create([]);'],
    [
      "Bun + bun-webgpu",
      bun,
      'const { createGPUInstance } = await import("bun-webgpu"); const gpu = createGPUInstance();',
    ],
  ] as const
) {
  Deno.test({
    name: `npm package: ${runtime} on lavapipe alone is a DeviceError that says to use SwiftShader`,
    ignore: !hasLavapipe,
    fn: async () => {
      const file = `${consumer}/no_adapter_${cmd === "node" ? "node" : "bun"}.mjs`;
      await Deno.writeTextFile(
        file,
        `${gpu}
        const { webgpuDevice } = await import("lora-webgpu");
        try {
          const device = await webgpuDevice({ gpu });
          console.log(JSON.stringify({ opened: device.name }));
        } catch (e) {
          console.log(JSON.stringify({ name: e.name, message: e.message }));
        }
        if (globalThis.process?.exit) process.exit(0);`,
      );
      const out = await run(cmd, [file], { cwd: consumer, env: { VK_ICD_FILENAMES: LAVAPIPE_ICD } });
      const got = JSON.parse(out.trim().split("\n").at(-1)!);
      assert.equal(got.opened, undefined, "Dawn opened lavapipe: update this test and the error message");
      assert.equal(got.name, "DeviceError");
      assert.ok(got.message.includes(`VK_ICD_FILENAMES=${SWIFTSHADER_ICD}`), got.message);
      assert.match(got.message, /lavapipe/);
      assert.doesNotMatch(got.message, /install .*'webgpu'|npm install/);
    },
  });
}

Deno.test("npm package: require() loads it under Node and computes", async () => {
  const code = `const { tensor, Linear, LinearLoRA } = require("lora-webgpu");
    const t = tensor([1, 2, 3], [3]);
    console.log(JSON.stringify({ lora: typeof LinearLoRA, linear: typeof Linear, sq: Array.from(t.mul(t).dataSync()) }));`;
  const got = JSON.parse(await run("node", ["--input-type=commonjs", "-e", code], { cwd: consumer }));
  assert.deepEqual(got, { lora: "function", linear: "function", sq: [1, 4, 9] });
});

Deno.test("npm package: package.json, LICENSE and README for people installing it", async () => {
  const pkg = JSON.parse(await Deno.readTextFile(`${pkgDir}/package.json`));
  const root_ = JSON.parse(await Deno.readTextFile(`${root}package.json`));
  assert.equal(pkg.name, "lora-webgpu");
  assert.equal(pkg.type, "module");
  assert.equal(pkg.private, undefined);
  assert.deepEqual(pkg.exports["."], {
    types: "./types/mod.d.ts",
    import: "./esm/mod.js",
    default: "./esm/mod.js",
  });
  assert.equal(Object.keys(pkg.exports["."])[0], "types", "types must come first to be picked");
  assert.equal(pkg.license, "Apache-2.0");
  assert.deepEqual(pkg.dependencies, { "@webgpu/types": root_.devDependencies["@webgpu/types"] });
  assert.match(pkg.repository.url, /^git\+https:\/\//);
  assert.match(pkg.homepage, /^https:\/\//);
  assert.ok(pkg.keywords.includes("lora") && pkg.keywords.includes("webgpu"));
  assert.deepEqual([...pkg.files].sort(), ["LICENSE", "README.md", "esm", "types"]);
  const license = await Deno.readTextFile(`${pkgDir}/LICENSE`);
  assert.match(license, /Apache License\s+Version 2\.0, January 2004/);
  assert.equal(license, await Deno.readTextFile(`${root}LICENSE`));
  const readme = await Deno.readTextFile(`${pkgDir}/README.md`);
  assert.doesNotMatch(readme, /from ["']\.{1,2}\//, "the shipped README imports by package name only");
  assert.doesNotMatch(readme, /mod\.ts/);
  assert.match(readme, /from "lora-webgpu"/);
  assert.match(readme, /adapterToFiles/);
  assert.match(readme, /loadAdapter\(model, files\)/);
});

Deno.test("npm package: the ES module loads unbundled in a browser; its map carries no sources", async () => {
  const js = await Deno.readTextFile(`${pkgDir}/esm/mod.js`);
  // Nothing for a browser to resolve: no static import or re-export, no bare dynamic import.
  assert.doesNotMatch(js, /^\s*import[\s{*"']/m);
  assert.doesNotMatch(js, /\bfrom\s*["']/);
  assert.doesNotMatch(js, /\bimport\(\s*["'](?!node:)/);
  assert.doesNotMatch(js, /\bimport\(\s*["']node:/, "node: modules only through the computed import");
  assert.match(js, /@compute/, "the WGSL kernels are embedded");
  const map = JSON.parse(await Deno.readTextFile(`${pkgDir}/esm/mod.js.map`));
  assert.equal(map.sourcesContent, undefined);
  assert.ok(map.mappings.length > 0);
});

Deno.test("npm package: declarations keep no .ts specifiers and reference their own globals", async () => {
  const dts = await Deno.readTextFile(`${pkgDir}/types/mod.d.ts`);
  assert.match(dts, /export \{[^}]*LinearLoRA/);
  assert.doesNotMatch(dts, /from "\.[^"]*\.ts"/);
  assert.match(dts, /^\/\/\/ <reference types="@webgpu\/types" \/>$/m);
  assert.match(dts, /^\/\/\/ <reference lib="esnext.disposable" \/>$/m);
});

/** A consumer's program using the types the declarations must carry (WebGPU's, Symbol.dispose). */
const consumerSource = `import {
  applyLoraToLinearModules, type Device, Linear, Module, PeftConfig, randn, type Tensor, webgpuDevice,
  type WebGpuDeviceOptions,
} from "lora-webgpu";
const model = new Module();
const q = new Linear(8, 8);
model.q_proj = q;
applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["q_proj"], dim: 2, alpha: 4 }));
export const y: Tensor = q.forward(randn([2, 8], { seed: 0 }));
export async function open(gpu: GPU, powerPreference: GPUPowerPreference): Promise<Device> {
  const options: WebGpuDeviceOptions = { gpu, powerPreference };
  return await webgpuDevice(options);
}
// The declarations are real types, not any: a wrong option must be an error.
// @ts-expect-error gpu must be a GPU
export const wrong = webgpuDevice({ gpu: 42 });
`;

Deno.test("npm package: a strict TypeScript project without skipLibCheck, with types: [], type-checks", async () => {
  const dir = await Deno.makeTempDir({ dir: consumer, prefix: "ts-" });
  await Deno.writeTextFile(`${dir}/index.ts`, consumerSource);
  const strict = {
    strict: true,
    noEmit: true,
    types: [],
    skipLibCheck: false,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    noImplicitOverride: true,
    target: "ES2022",
  };
  const variants: Record<string, unknown>[] = [
    { module: "NodeNext", moduleResolution: "NodeNext" }, // lib left to TypeScript's default
    { module: "ESNext", moduleResolution: "Bundler", lib: ["ES2022", "DOM"] },
  ];
  for (const variant of variants) {
    const config = { compilerOptions: { ...strict, ...variant }, files: ["index.ts"] };
    await Deno.writeTextFile(`${dir}/tsconfig.json`, JSON.stringify(config));
    await run(tsc, ["-p", dir], { cwd: dir }).catch((e) => {
      throw new Error(`tsc with ${JSON.stringify(variant)}: ${e.message}`);
    });
  }
});

/** The README's code blocks with the runtimes each runs on (`<!-- test: node bun -->` before it). */
function readmeExamples(readme: string): { tags: string[]; code: string }[] {
  const blocks: { tags: string[]; code: string }[] = [];
  for (const m of readme.matchAll(/<!-- test: ([\w\s-]+) -->\s*```js\n([\s\S]*?)```/g)) {
    blocks.push({ tags: m[1].trim().split(/\s+/), code: m[2] });
  }
  return blocks;
}

Deno.test("npm package: the shipped README's examples run as written", async (t) => {
  const readme = await Deno.readTextFile(`${pkgDir}/README.md`);
  const examples = readmeExamples(readme);
  const tags = examples.flatMap((e) => e.tags);
  for (const tag of ["node", "bun", "node-cjs", "node-gpu", "bun-gpu", "browser"]) {
    assert.ok(tags.includes(tag), `a README example runs on ${tag}`);
  }
  for (const [i, { tags, code }] of examples.entries()) {
    for (const tag of tags) {
      if (tag === "browser") continue; // test/npm/browser.ts loads those in Chromium
      const gpu = tag.endsWith("-gpu");
      await t.step({
        name: `example ${i + 1} on ${tag}`,
        ignore: gpu && !swiftshader,
        fn: async () => {
          const file = `${consumer}/readme_${i}.${tag === "node-cjs" ? "cjs" : "mjs"}`;
          await Deno.writeTextFile(file, code);
          const cmd = tag.startsWith("bun") ? bun : "node";
          const out = await run(cmd, [file], { cwd: consumer, env: gpu ? dawnEnv : {} });
          assert.ok(out.trim().length > 0, "the example prints its result");
        },
      });
    }
  }
});

Deno.test("npm package: a CPU-only LoRA program tree-shakes the WebGPU backend away", async () => {
  const dir = await Deno.makeTempDir({ dir: consumer, prefix: "shake-" });
  const readme = await Deno.readTextFile(`${pkgDir}/README.md`);
  await Deno.writeTextFile(`${dir}/cpu.mjs`, readmeExamples(readme)[0].code);
  await Deno.writeTextFile(`${dir}/all.mjs`, 'export * from "lora-webgpu";\n');
  const sizes: Record<string, number> = {};
  for (const entry of ["cpu", "all"]) {
    await run(esbuild, [
      `${entry}.mjs`,
      "--bundle",
      "--minify",
      "--format=esm",
      "--platform=neutral",
      `--outfile=${entry}.min.js`,
      "--log-level=warning",
    ], { cwd: dir });
    sizes[entry] = (await Deno.stat(`${dir}/${entry}.min.js`)).size;
  }
  const cpu = await Deno.readTextFile(`${dir}/cpu.min.js`);
  assert.doesNotMatch(cpu, /@compute|@workgroup_size/, "no WGSL in a CPU-only bundle");
  assert.doesNotMatch(cpu, /requestAdapter/, "no WebGPU device code in a CPU-only bundle");
  assert.ok(sizes.cpu < sizes.all / 2, `CPU-only ${sizes.cpu} B against ${sizes.all} B for everything`);
});

registerBrowserTest(pkgDir);
