/**
 * Test helper (registered by test/npm/npm_package_test.ts, which builds the package once for both).
 * The npm package's ES module loads in a browser as it is, with no bundler: headless Chromium (Debian's
 * `chromium`, the package that also brings SwiftShader) opens a page served from this machine's loopback
 * that maps the name `lora-webgpu` to `esm/mod.js` with an import map, runs the shipped README's browser
 * examples (a LoRA adapter through `adapterToFiles` and `loadAdapter(model, files)`) and a LoRA
 * forward/backward, and posts the results back. A module that kept a bare or `node:` import, or that
 * needed Node at load time, would fail to load and post an error instead.
 */
import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;
/** Debian's `chromium` package (.ci/run installs it); shared with test/examples/browser/. */
export const CHROMIUM = "/usr/bin/chromium";

/** Whether Chromium is here; CI installs it, elsewhere its absence skips the test. */
export const hasChromium: boolean = await Deno.stat(CHROMIUM).then(() => true, () => false);
if (!hasChromium) {
  if (Deno.env.get("CI") === "true") {
    throw new Error(`CI=true but ${CHROMIUM} is missing (apt-get install chromium)`);
  }
  console.warn(`skipping the browser test: ${CHROMIUM} is missing (apt-get install chromium)`);
}

const MIME: Record<string, string> = {
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".html": "text/html",
  ".map": "application/json",
};

/** The page: a LoRA forward/backward (test/npm/smoke.mjs), then the README's browser examples. */
function page(examples: string[]): string {
  const steps = examples.map((code, i) => `
    logs.length = 0;
    await import(URL.createObjectURL(new Blob([${JSON.stringify(code)}], { type: "text/javascript" })));
    results.push({ example: ${i}, printed: logs.join("\\n") });`).join("\n");
  return `<!doctype html><meta charset="utf-8"><title>lora-webgpu in a browser</title>
<script type="importmap">{ "imports": { "lora-webgpu": "/esm/mod.js" } }</script>
<script type="module">
const results = [], logs = [];
const log = console.log;
console.log = (...args) => { logs.push(args.map((a) => typeof a === "string" ? a : JSON.stringify(a)).join(" ")); log(...args); };
async function report(body) {
  await fetch("/result", { method: "POST", body: JSON.stringify(body) });
}
try {
  // The smoke step first: it draws LoRA's initial weights from the global generator, as the reference does.
  const smoke = await import(URL.createObjectURL(new Blob([await (await fetch("/smoke.mjs")).text()], { type: "text/javascript" })));
  results.push({ smoke: logs.at(-1) });
  ${steps}
  await report({ ok: true, results, userAgent: navigator.userAgent });
} catch (e) {
  await report({ ok: false, error: String(e && e.stack || e) });
}
</script>`;
}

/** Registers the browser test on the package built in `pkgDir` (by test/npm/npm_package_test.ts). */
export function registerBrowserTest(pkgDir: string): void {
  Deno.test({
    name: "npm package: the ES module runs unbundled in Chromium through an import map",
    ignore: !hasChromium,
    sanitizeResources: false, // the browser's keep-alive connections close when it exits
    fn: async () => {
      const profile = await Deno.makeTempDir({ prefix: "lora-chromium-" });
      try {
        const readme = await Deno.readTextFile(`${pkgDir}/README.md`);
        const examples = [...readme.matchAll(/<!-- test: ([\w\s-]+) -->\s*```js\n([\s\S]*?)```/g)]
          .filter((m) => m[1].split(/\s+/).includes("browser")).map((m) => m[2]);
        assert.ok(examples.length > 0, "the README has browser examples");
        // The smoke script reads process.argv only when no module is passed; give it the package name.
        const smoke = (await Deno.readTextFile(`${root}test/npm/smoke.mjs`))
          .replace(/await import\([^;]*\);/, 'await import("lora-webgpu");');

        const { promise: posted, resolve } = Promise.withResolvers<Record<string, unknown>>();
        const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
          const path = new URL(req.url).pathname;
          if (req.method === "POST" && path === "/result") {
            resolve(await req.json());
            return new Response("ok");
          }
          if (path === "/") {
            return new Response(page(examples), { headers: { "content-type": MIME[".html"] } });
          }
          if (path === "/smoke.mjs") return new Response(smoke, { headers: { "content-type": MIME[".js"] } });
          if (path.startsWith("/esm/") && !path.includes("..")) {
            const body = await Deno.readFile(`${pkgDir}${path}`).catch(() => null);
            const ext = path.slice(path.lastIndexOf("."));
            if (body) return new Response(body, { headers: { "content-type": MIME[ext] ?? "text/plain" } });
          }
          return new Response("not found", { status: 404 });
        });
        const url = `http://127.0.0.1:${server.addr.port}/`;
        const browser = new Deno.Command(CHROMIUM, {
          args: [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            `--user-data-dir=${profile}`,
            "--remote-debugging-port=0", // keeps headless Chromium running until killed
            url,
          ],
          stdout: "null",
          stderr: "piped",
        }).spawn();
        const timeout = new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error("Chromium posted no result in 120 s")), 120_000)
        );
        let result: Record<string, unknown>;
        try {
          result = await Promise.race([posted, timeout]);
        } finally {
          browser.kill("SIGTERM");
          await browser.output();
          await server.shutdown();
        }
        assert.equal(result.ok, true, String(result.error));
        const results = result.results as { example?: number; printed?: string; smoke?: string }[];
        assert.match(results[1].printed ?? "", /patched \["q_proj"\]/);
        const smokeOut = JSON.parse(results[0].smoke!);
        const reference = JSON.parse(
          new TextDecoder().decode(
            (await new Deno.Command(Deno.execPath(), {
              args: ["run", "-A", "test/npm/smoke.mjs", `${root}mod.ts`],
              cwd: root,
              stdout: "piped",
            }).output()).stdout,
          ),
        );
        assert.deepEqual(smokeOut, reference, "the browser computes what Deno computes on the source");
      } finally {
        await Deno.remove(profile, { recursive: true }).catch(() => {});
      }
    },
  });
}
