/**
 * Serves the browser example (examples/browser/index.html) on this machine's loopback:
 * `deno run -A examples/browser/serve.ts [--port 8000]`, then open the printed address in a browser with
 * WebGPU (Chrome, Edge; Firefox and Safari where enabled). Loopback counts as a secure context, which
 * WebGPU requires; a page opened from `file://` gets no WebGPU and cannot fetch the base model.
 *
 * At start it bundles the library with scripts/build_npm.ts's `bundleForBrowser` (the npm package's
 * `esm/mod.js`, served as `lora-webgpu.js`) and the page module `main.ts` with every import of the
 * library's `mod.ts` left as the bare name `lora-webgpu`, which the page's import map resolves. The demo's
 * base model is served from examples/demo/base-model.
 * @module
 */
import * as esbuild from "esbuild";
import { bundleForBrowser } from "../../scripts/build_npm.ts";

const here = new URL("./", import.meta.url).pathname;
const root = new URL("../../", import.meta.url).pathname;

/** A running example server. */
export interface ExampleServer {
  /** The page's address, ending in "/". */
  url: string;
  /** Stops serving and removes the bundles. */
  close(): Promise<void>;
}

/** Bundles the page module, leaving the library to the import map. */
async function bundlePage(outfile: string): Promise<void> {
  const library = `${root}mod.ts`;
  await esbuild.build({
    entryPoints: [`${here}main.ts`],
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    outfile,
    logLevel: "warning",
    plugins: [{
      name: "library-by-name",
      setup(build) {
        build.onResolve({ filter: /mod\.ts$/ }, (args) => {
          const resolved = new URL(args.path, `file://${args.resolveDir}/`).pathname;
          return resolved === library ? { path: "lora-webgpu", external: true } : undefined;
        });
      },
    }],
  });
  await esbuild.stop();
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".map": "application/json",
  ".json": "application/json",
  ".safetensors": "application/octet-stream",
};

/** Builds the bundles and starts serving; `port` 0 picks a free one. */
export async function serveExample(opts: { hostname?: string; port?: number } = {}): Promise<ExampleServer> {
  const build = await Deno.makeTempDir({ prefix: "lora-browser-example-" });
  try {
    await bundleForBrowser("mod.ts", `${build}/lora-webgpu.js`);
    await bundlePage(`${build}/main.js`);
  } catch (e) {
    await Deno.remove(build, { recursive: true });
    throw e;
  }
  const files: Record<string, string> = {
    "/": `${here}index.html`,
    "/index.html": `${here}index.html`,
    "/main.js": `${build}/main.js`,
    "/lora-webgpu.js": `${build}/lora-webgpu.js`,
    "/lora-webgpu.js.map": `${build}/lora-webgpu.js.map`,
    "/base-model/config.json": `${root}examples/demo/base-model/config.json`,
    "/base-model/model.safetensors": `${root}examples/demo/base-model/model.safetensors`,
  };
  const server = Deno.serve(
    { hostname: opts.hostname ?? "127.0.0.1", port: opts.port ?? 8000, onListen() {} },
    async (req) => {
      const path = new URL(req.url).pathname;
      const file = Object.hasOwn(files, path) ? files[path] : undefined;
      if (req.method !== "GET" || file === undefined) return new Response("not found", { status: 404 });
      const ext = file.slice(file.lastIndexOf("."));
      return new Response(await Deno.readFile(file), {
        headers: { "content-type": TYPES[ext] ?? "application/octet-stream", "cache-control": "no-store" },
      });
    },
  );
  const host = server.addr.hostname.includes(":") ? `[${server.addr.hostname}]` : server.addr.hostname;
  return {
    url: `http://${host}:${server.addr.port}/`,
    close: async () => {
      await server.shutdown();
      await Deno.remove(build, { recursive: true }).catch(() => {});
    },
  };
}

if (import.meta.main) {
  const at = Deno.args.indexOf("--port");
  const port = at >= 0 ? Number(Deno.args[at + 1]) : 8000;
  const { url } = await serveExample({ port });
  console.log(`serving the browser example at ${url} (Ctrl-C stops)`);
}
