/**
 * Small file helpers that work the same on Deno, Node and Bun. Deno is used through its own API; other
 * runtimes through `node:fs/promises`, imported lazily so browser bundles never need it. Browsers have no
 * filesystem: there every helper throws a ConfigError telling the caller to pass the bytes themselves.
 *
 * Writes never leave a half-written file at the final path: data goes to a temporary name in the same
 * directory first and is then renamed over the target.
 * @module
 */
import { ConfigError, LoraError } from "../core/errors.ts";

/** The filesystem operations the helpers need; one implementation per runtime. */
export interface FsOps {
  readFile(path: string): Promise<Uint8Array>;
  writeFile(path: string, data: Uint8Array): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  /** Creates the directory and its missing parents; an existing directory is fine. */
  mkdirp(path: string): Promise<void>;
  /** Removes a file. */
  remove(path: string): Promise<void>;
  /** Whether the path is a directory, a file (anything else), or absent (null). */
  kind(path: string): Promise<"dir" | "file" | null>;
}

interface DenoFs {
  readFile(path: string): Promise<Uint8Array>;
  writeFile(path: string, data: Uint8Array): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  mkdir(path: string, opts: { recursive: boolean }): Promise<void>;
  remove(path: string): Promise<void>;
  stat(path: string): Promise<{ isDirectory: boolean }>;
}

interface NodeFs {
  readFile(path: string): Promise<Uint8Array>;
  writeFile(path: string, data: Uint8Array): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  mkdir(path: string, opts: { recursive: boolean }): Promise<unknown>;
  unlink(path: string): Promise<void>;
  stat(path: string): Promise<{ isDirectory(): boolean }>;
}

/** Whether `err` says that a path does not exist (Deno's NotFound or Node's ENOENT). */
export function isNotFoundError(err: unknown): boolean {
  const denoNotFound = (globalThis as { Deno?: { errors?: { NotFound?: new () => Error } } }).Deno?.errors
    ?.NotFound;
  if (denoNotFound && err instanceof denoNotFound) return true;
  return (err as { code?: unknown } | null)?.code === "ENOENT";
}

async function kindOf(stat: () => Promise<boolean>): Promise<"dir" | "file" | null> {
  try {
    return (await stat()) ? "dir" : "file";
  } catch (err) {
    if (isNotFoundError(err)) return null;
    throw err;
  }
}

function denoOps(deno: DenoFs): FsOps {
  return {
    readFile: (p) => deno.readFile(p),
    writeFile: (p, d) => deno.writeFile(p, d),
    rename: (a, b) => deno.rename(a, b),
    mkdirp: (p) => deno.mkdir(p, { recursive: true }),
    remove: (p) => deno.remove(p),
    kind: (p) => kindOf(async () => (await deno.stat(p)).isDirectory),
  };
}

function nodeOps(fs: NodeFs): FsOps {
  return {
    readFile: async (p) => {
      const buf = await fs.readFile(p);
      // Node hands back a Buffer; callers get a plain Uint8Array view of the same bytes.
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    },
    writeFile: (p, d) => fs.writeFile(p, d),
    rename: (a, b) => fs.rename(a, b),
    mkdirp: async (p) => void await fs.mkdir(p, { recursive: true }),
    remove: (p) => fs.unlink(p),
    kind: (p) => kindOf(async () => (await fs.stat(p)).isDirectory()),
  };
}

let cached: FsOps | null = null;
let override: FsOps | null = null;

/** The filesystem of this runtime; a ConfigError naming `op` where there is none (browsers). */
async function fsFor(op: string): Promise<FsOps> {
  if (override) return override;
  if (cached) return cached;
  const deno = (globalThis as { Deno?: DenoFs }).Deno;
  if (deno && typeof deno.readFile === "function") return (cached = denoOps(deno));
  // A computed specifier keeps bundlers from trying to resolve node:fs for browser builds.
  const specifier = ["node", "fs/promises"].join(":");
  try {
    const mod = (await import(specifier)) as NodeFs & { default?: NodeFs };
    return (cached = nodeOps(typeof mod.readFile === "function" ? mod : mod.default!));
  } catch {
    throw new ConfigError(
      `${op}: this runtime has no filesystem (a browser?); pass the files' contents instead of a path, ` +
        `e.g. { "adapter_config.json": text, "adapter_model.safetensors": bytes }`,
    );
  }
}

/**
 * @internal replaces the filesystem used by every helper (tests inject failures this way); null restores
 * the runtime's own.
 */
export function _setFsForTesting(ops: FsOps | null): void {
  override = ops;
}

/** Joins a directory and a file name with "/", which every runtime accepts (Windows included). */
export function joinPath(dir: string, name: string): string {
  if (dir === "") return name;
  return /[\\/]$/.test(dir) ? dir + name : `${dir}/${name}`;
}

/** The bytes of a file. Errors from the runtime propagate (use {@link isNotFoundError} to tell absence). */
export async function readFileBytes(path: string): Promise<Uint8Array> {
  return await (await fsFor("readFileBytes")).readFile(path);
}

/** A file's contents decoded as UTF-8 (invalid bytes become U+FFFD). */
export async function readFileText(path: string): Promise<string> {
  return new TextDecoder().decode(await (await fsFor("readFileText")).readFile(path));
}

/** Creates a directory and any missing parents; an existing directory is fine. */
export async function mkdirp(path: string): Promise<void> {
  await (await fsFor("mkdirp")).mkdirp(path);
}

/** Whether `path` names a directory, some other file, or nothing (null). */
export async function pathKind(path: string): Promise<"dir" | "file" | null> {
  return await (await fsFor("pathKind")).kind(path);
}

/** A fresh name next to `path`, unlikely to collide with anything, for a temporary file. */
function tempName(path: string): string {
  const rand = Math.floor(Math.random() * 2 ** 48).toString(36);
  return `${path}.tmp-${Date.now().toString(36)}-${rand}`;
}

function encode(data: Uint8Array | string): Uint8Array {
  return typeof data === "string" ? new TextEncoder().encode(data) : data;
}

/** Removes files, ignoring failures: used to clean up after an error that is already being reported. */
async function removeQuietly(fs: FsOps, paths: string[]): Promise<void> {
  for (const p of paths) {
    try {
      await fs.remove(p);
    } catch { /* the original error matters more */ }
  }
}

/** Removes the files that exist among `paths` (absent ones are fine). */
export async function removeFiles(paths: string[]): Promise<void> {
  const fs = await fsFor("removeFiles");
  for (const p of paths) {
    try {
      await fs.remove(p);
    } catch (err) {
      if (!isNotFoundError(err)) throw err;
    }
  }
}

/** Writes one file via a temporary name and a rename, so the final path never holds partial data. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  await writeFilesAtomic({ [path]: data });
}

/**
 * Writes several files (path → contents) so that a failure leaves the previous files untouched: every
 * file is first written in full to a temporary name, the final paths are checked (a directory in the
 * way is an error), and only then are the temporaries renamed into place. Temporaries are removed on any
 * failure. Each rename is atomic on its own; should a rename fail after others succeeded (rare: the
 * checks above passed), the error says which files were already replaced.
 */
export async function writeFilesAtomic(files: Record<string, Uint8Array | string>): Promise<void> {
  const fs = await fsFor("writeFilesAtomic");
  const entries = Object.entries(files);
  const temps: string[] = [];
  try {
    for (const [path, data] of entries) {
      const tmp = tempName(path);
      temps.push(tmp);
      await fs.writeFile(tmp, encode(data));
    }
    for (const [path] of entries) {
      if ((await fs.kind(path)) === "dir") {
        throw new ConfigError(`writeFilesAtomic: ${path} is a directory; cannot replace it with a file`);
      }
    }
  } catch (err) {
    await removeQuietly(fs, temps);
    throw err;
  }
  const done: string[] = [];
  for (let i = 0; i < entries.length; i++) {
    try {
      await fs.rename(temps[i], entries[i][0]);
      done.push(entries[i][0]);
    } catch (err) {
      await removeQuietly(fs, temps.slice(i));
      if (done.length === 0) throw err;
      const why = err instanceof Error ? err.message : String(err);
      throw new LoraError(
        `writeFilesAtomic: renaming into ${entries[i][0]} failed (${why}) after ${done.join(", ")} ` +
          `had already been replaced`,
      );
    }
  }
}
