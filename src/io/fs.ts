/**
 * Small file helpers that work the same on Deno, Node and Bun. Deno is used through its own API; other
 * runtimes through `node:fs/promises`, imported lazily so browser bundles never need it. Browsers have no
 * filesystem: there every helper throws a ConfigError telling the caller to pass the bytes themselves.
 *
 * Writes never leave a half-written file at the final path: data goes to a temporary name in the same
 * directory first and is then renamed over the target. Saves of several files go further
 * ({@link writeDirAtomic}): a complete new folder is written beside the target and switched in with one
 * rename of a symbolic link, so a reader of the target sees one whole save, never a mix.
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
  /** Like kind, without following a final symbolic link ("symlink"). Optional: the runtime's own otherwise. */
  lkind?(path: string): Promise<"dir" | "file" | "symlink" | null>;
  /** A directory's entries, symbolic links not followed. Optional, as lkind. */
  readDir?(path: string): Promise<{ name: string; kind: "dir" | "file" | "symlink" }[]>;
  /** Creates a symbolic link at `path` holding `target`. Optional, as lkind. */
  symlink?(target: string, path: string): Promise<void>;
  /** The target a symbolic link holds. Optional, as lkind. */
  readLink?(path: string): Promise<string>;
  /** A hard link (a second name for the same file). Optional, as lkind. */
  link?(from: string, to: string): Promise<void>;
  /** Removes a file, link or directory with everything in it. Optional, as lkind. */
  removeTree?(path: string): Promise<void>;
  /** The absolute path with every symbolic link resolved. Optional, as lkind. */
  realPath?(path: string): Promise<string>;
  /** Opens a file for reads at any position. Optional: a reader over {@link FsOps.readFile}'s bytes otherwise. */
  openRead?(path: string): Promise<FileRangeReader>;
}

/** A file open for reading byte ranges (what loaders use to stream big files without holding them). */
export interface FileRangeReader {
  /** The file's length in bytes when opened. */
  readonly size: number;
  /**
   * Fills `into` with the bytes at `position` .. `position + into.length`; a range past the end is an
   * error. One read at a time per reader.
   */
  read(into: Uint8Array, position: number): Promise<void>;
  /** Closes the file (idempotent). */
  close(): void;
}

type EntryKind = "dir" | "file" | "symlink";

interface DenoFile {
  read(p: Uint8Array): Promise<number | null>;
  seek(offset: number, whence: number): Promise<number>;
  stat(): Promise<{ size: number }>;
  close(): void;
}

interface DenoFs {
  open(path: string, opts: { read: true }): Promise<DenoFile>;
  readFile(path: string): Promise<Uint8Array>;
  writeFile(path: string, data: Uint8Array): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  mkdir(path: string, opts: { recursive: boolean }): Promise<void>;
  stat(path: string): Promise<{ isDirectory: boolean }>;
  lstat(path: string): Promise<{ isDirectory: boolean; isSymlink: boolean }>;
  readDir(path: string): AsyncIterable<{ name: string; isDirectory: boolean; isSymlink: boolean }>;
  symlink(target: string, path: string): Promise<void>;
  readLink(path: string): Promise<string>;
  link(from: string, to: string): Promise<void>;
  remove(path: string, opts?: { recursive: boolean }): Promise<void>;
  realPath(path: string): Promise<string>;
}

interface NodeFileHandle {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  stat(): Promise<{ size: number }>;
  close(): Promise<void>;
}

interface NodeFs {
  open(path: string, flags: "r"): Promise<NodeFileHandle>;
  readFile(path: string): Promise<Uint8Array>;
  writeFile(path: string, data: Uint8Array): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  mkdir(path: string, opts: { recursive: boolean }): Promise<unknown>;
  unlink(path: string): Promise<void>;
  stat(path: string): Promise<{ isDirectory(): boolean }>;
  lstat(path: string): Promise<{ isDirectory(): boolean; isSymbolicLink(): boolean }>;
  readdir(
    path: string,
    opts: { withFileTypes: true },
  ): Promise<{ name: string; isDirectory(): boolean; isSymbolicLink(): boolean }[]>;
  symlink(target: string, path: string): Promise<void>;
  readlink(path: string): Promise<string>;
  link(from: string, to: string): Promise<void>;
  rm(path: string, opts: { recursive: boolean; force: boolean }): Promise<void>;
  realpath(path: string): Promise<string>;
}

/** Whether `err` says that a path does not exist (Deno's NotFound or Node's ENOENT). */
export function isNotFoundError(err: unknown): boolean {
  const denoNotFound = (globalThis as { Deno?: { errors?: { NotFound?: new () => Error } } }).Deno?.errors
    ?.NotFound;
  if (denoNotFound && err instanceof denoNotFound) return true;
  return (err as { code?: unknown } | null)?.code === "ENOENT";
}

/** Whether `err` says that a path runs through a file (Deno's NotADirectory or Node's ENOTDIR). */
function isNotADirectoryError(err: unknown): boolean {
  const denoNotDir = (globalThis as { Deno?: { errors?: { NotADirectory?: new () => Error } } }).Deno?.errors
    ?.NotADirectory;
  if (denoNotDir && err instanceof denoNotDir) return true;
  return (err as { code?: unknown } | null)?.code === "ENOTDIR";
}

async function kindOf<K extends string>(stat: () => Promise<K>): Promise<K | null> {
  try {
    return await stat();
  } catch (err) {
    // A path under a file (dir/file/x) exists no more than a missing one does.
    if (isNotFoundError(err) || isNotADirectoryError(err)) return null;
    throw err;
  }
}

const entryKind = (dir: boolean, link: boolean): EntryKind => link ? "symlink" : dir ? "dir" : "file";

function denoOps(deno: DenoFs): Required<FsOps> {
  return {
    readFile: (p) => deno.readFile(p),
    writeFile: (p, d) => deno.writeFile(p, d),
    rename: (a, b) => deno.rename(a, b),
    mkdirp: (p) => deno.mkdir(p, { recursive: true }),
    remove: (p) => deno.remove(p),
    kind: (p) => kindOf(async () => (await deno.stat(p)).isDirectory ? "dir" : "file"),
    lkind: (p) =>
      kindOf(async () => {
        const st = await deno.lstat(p);
        return entryKind(st.isDirectory, st.isSymlink);
      }),
    readDir: async (p) => {
      const out: { name: string; kind: EntryKind }[] = [];
      for await (const e of deno.readDir(p)) {
        out.push({ name: e.name, kind: entryKind(e.isDirectory, e.isSymlink) });
      }
      return out;
    },
    symlink: (t, p) => deno.symlink(t, p),
    readLink: (p) => deno.readLink(p),
    link: (a, b) => deno.link(a, b),
    removeTree: (p) => deno.remove(p, { recursive: true }),
    realPath: (p) => deno.realPath(p),
    openRead: async (p) => {
      const file = await deno.open(p, { read: true });
      const size = (await file.stat()).size;
      let closed = false;
      return {
        size,
        read: async (into, position) => {
          checkRange(p, size, into.length, position);
          await file.seek(position, 0); // Deno.SeekMode.Start
          let done = 0;
          while (done < into.length) {
            const got = await file.read(into.subarray(done));
            if (got === null) throw new RangeError(`${p}: file ended at ${position + done} bytes`);
            done += got;
          }
        },
        close: () => {
          if (!closed) file.close();
          closed = true;
        },
      };
    },
  };
}

/** A read past a file's end is an error of the caller's (the loaders check offsets first). */
function checkRange(path: string, size: number, length: number, position: number): void {
  if (!(position >= 0 && position + length <= size)) {
    throw new RangeError(`${path}: bytes [${position}, ${position + length}] lie outside its ${size} bytes`);
  }
}

/** A {@link FileRangeReader} over bytes already in memory. */
export function bytesRangeReader(bytes: Uint8Array, name = "bytes"): FileRangeReader {
  return {
    size: bytes.length,
    // A bad range rejects, like a file's read, instead of throwing at the call.
    read: (into, position) => {
      try {
        checkRange(name, bytes.length, into.length, position);
      } catch (e) {
        return Promise.reject(e);
      }
      into.set(bytes.subarray(position, position + into.length));
      return Promise.resolve();
    },
    close: () => {},
  };
}

function nodeOps(fs: NodeFs): Required<FsOps> {
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
    kind: (p) => kindOf(async () => (await fs.stat(p)).isDirectory() ? "dir" : "file"),
    lkind: (p) =>
      kindOf(async () => {
        const st = await fs.lstat(p);
        return entryKind(st.isDirectory(), st.isSymbolicLink());
      }),
    readDir: async (p) =>
      (await fs.readdir(p, { withFileTypes: true })).map((e) => ({
        name: e.name,
        kind: entryKind(e.isDirectory(), e.isSymbolicLink()),
      })),
    symlink: (t, p) => fs.symlink(t, p),
    readLink: (p) => fs.readlink(p),
    link: (a, b) => fs.link(a, b),
    removeTree: (p) => fs.rm(p, { recursive: true, force: true }),
    realPath: (p) => fs.realpath(p),
    openRead: async (p) => {
      const fh = await fs.open(p, "r");
      const size = (await fh.stat()).size;
      let closed = false;
      return {
        size,
        read: async (into, position) => {
          checkRange(p, size, into.length, position);
          let done = 0;
          while (done < into.length) {
            const { bytesRead } = await fh.read(into, done, into.length - done, position + done);
            if (bytesRead === 0) throw new RangeError(`${p}: file ended at ${position + done} bytes`);
            done += bytesRead;
          }
        },
        close: () => {
          if (!closed) void fh.close();
          closed = true;
        },
      };
    },
  };
}

let cached: Required<FsOps> | null = null;
let override: FsOps | null = null;

/** The filesystem of this runtime; a ConfigError naming `op` where there is none (browsers). */
async function fsFor(op: string): Promise<Required<FsOps>> {
  // A test's filesystem may leave the optional operations out: the runtime's own fill them in.
  if (override) return { ...(await runtimeFs(op)), ...override } as Required<FsOps>;
  return await runtimeFs(op);
}

async function runtimeFs(op: string): Promise<Required<FsOps>> {
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

/** @internal The operations over a `node:fs/promises` module (tests run Node's code paths in Deno). */
export function _nodeOpsForTesting(fs: unknown): Required<FsOps> {
  return nodeOps(fs as NodeFs);
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

/**
 * Opens a file for range reads ({@link FileRangeReader}). A test filesystem without `openRead` gets a
 * reader over its `readFile` bytes. Errors from the runtime propagate.
 */
export async function openFileReader(path: string): Promise<FileRangeReader> {
  if (override && !override.openRead) return bytesRangeReader(await override.readFile(path), path);
  return await (await fsFor("openFileReader")).openRead(path);
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

/** Options of {@link writeDirAtomic}. */
export interface WriteDirOptions {
  /** The public call to name in errors (`saveAdapter`, `saveModel`, ...). */
  op: string;
  /**
   * Files of the previous save (relative paths) not to carry into the new one; every other file already
   * in `dir` is kept (a checkpoint's optimizer state beside an adapter saved into it, say).
   */
  drop?: (relPath: string) => boolean;
}

const dirname = (path: string): string => {
  const trimmed = path.replace(/[\\/]+$/, "");
  const cut = Math.max(trimmed.lastIndexOf("/"), trimmed.lastIndexOf("\\"));
  if (cut < 0) return ".";
  return cut === 0 ? trimmed.slice(0, 1) : trimmed.slice(0, cut);
};
const basename = (path: string): string => {
  const trimmed = path.replace(/[\\/]+$/, "");
  return trimmed.slice(Math.max(trimmed.lastIndexOf("/"), trimmed.lastIndexOf("\\")) + 1);
};
/**
 * The tag of a save's folders beside its target: `p<pid>-<host>-<time>-<random>` (base 36), so that a
 * later save can tell a leftover of a killed save (its process gone) from the folder of one still running.
 */
const randomTag = (): string =>
  `p${processId().toString(36)}-${hostTag()}-${Date.now().toString(36)}-${
    Math.floor(Math.random() * 2 ** 48).toString(36)
  }`;

type ProcessGlobals = {
  Deno?: { pid?: number; hostname?: () => string; kill?: (pid: number, signal: unknown) => void };
  process?: { pid?: number; kill?: (pid: number, signal: number) => void; env?: Record<string, string> };
};
const globals = globalThis as unknown as ProcessGlobals;

/** This process's id (0 where the runtime has none: browsers, which have no filesystem anyway). */
function processId(): number {
  return globals.Deno?.pid ?? globals.process?.pid ?? 0;
}

let hostTagCache: string | null = null;
/**
 * A short tag of this machine's name (a 32-bit FNV-1a hash, base 36; "0" where it cannot be read): a pid
 * means something only on its own machine, and a shared folder may be written from several.
 */
function hostTag(): string {
  if (hostTagCache !== null) return hostTagCache;
  let name = "";
  try {
    name = globals.Deno?.hostname?.() ?? globals.process?.env?.HOSTNAME ?? "";
  } catch { /* no permission to read it */ }
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return (hostTagCache = name === "" ? "0" : h.toString(36));
}

/**
 * Whether process `pid` of this machine runs: true, false, or null where this runtime cannot tell (no
 * permission to signal, no process API). Signal 0 tests for the process without signalling it.
 */
function processAlive(pid: number): boolean | null {
  try {
    if (globals.Deno?.kill) globals.Deno.kill(pid, 0);
    else if (globals.process?.kill) globals.process.kill(pid, 0);
    else return null;
    return true;
  } catch (err) {
    if (isNotFoundError(err) || (err as { code?: unknown } | null)?.code === "ESRCH") return false;
    const name = (err as { name?: unknown } | null)?.name;
    // The OS refused the signal (another user's process): it exists. A permission of the runtime's own
    // (Deno's NotCapable without --allow-run) says nothing about it.
    if (name === "PermissionDenied" || (err as { code?: unknown } | null)?.code === "EPERM") return true;
    return null;
  }
}

/** @internal a leftover tag as a save by process `pid` (of this machine, or of `host`) at `time` names it. */
export function _saveTagForTesting(pid: number, time: number, host = hostTag()): string {
  return `p${pid.toString(36)}-${host}-${time.toString(36)}-test`;
}

/** Leftovers of other saves whose owner cannot be asked are removed only after this long (24 hours). */
export const STALE_SAVE_AGE_MS = 24 * 3600 * 1000;

/** A save's leftover beside its target: `.<base>.save-<tag>`, `.<base>.link-<tag>` or `.<base>.old-<tag>`. */
const LEFTOVER = /^\.(.+)\.(save|link|old)-([0-9a-z-]+)$/;

/**
 * Whether the save that made a leftover with `tag` has ended: its process is gone (tags made on this
 * machine), or, where that cannot be told (another machine, an older tag without a pid, no permission to
 * ask), the tag is older than {@link STALE_SAVE_AGE_MS}.
 */
function saveEnded(tag: string, now: number): boolean {
  const m = /^p([0-9a-z]+)-([0-9a-z]+)-([0-9a-z]+)-[0-9a-z]+$/.exec(tag);
  if (m !== null && m[2] === hostTag() && m[2] !== "0") {
    const alive = processAlive(parseInt(m[1], 36));
    if (alive !== null) return !alive;
  }
  const time = parseInt(m === null ? tag.split("-")[0] : m[3], 36);
  return Number.isFinite(time) && now - time > STALE_SAVE_AGE_MS;
}

/**
 * Removes what killed saves left in `parent`: their unfinished `.save-` folders and link temporaries, and
 * the `.old-` folders moved aside by a save killed after its switch (only where the target exists again, so
 * a folder that is the only copy of a save is kept). Never a folder a link in `parent` points at (the
 * current save of some target), never one of a save still running. The owners are asked before the links
 * are read: an owner found gone can no longer switch a link to its folder afterwards. Failures are ignored
 * (the next save tries again).
 */
async function removeLeftovers(fs: Required<FsOps>, parent: string): Promise<void> {
  const entries = await fs.readDir(parent);
  const now = Date.now();
  const ended = entries.filter((e) => {
    const m = LEFTOVER.exec(e.name);
    return m !== null && saveEnded(m[3], now);
  });
  if (ended.length === 0) return;
  const linked = new Set<string>();
  const endedNames = new Set(ended.map((e) => e.name));
  for (const e of await fs.readDir(parent)) {
    // A link temporary of an ended save protects nothing: it goes too, and so does the folder it names
    // (a save killed between making its link and renaming it over the target left both).
    if (e.kind === "symlink" && !endedNames.has(e.name)) {
      linked.add(basename(await fs.readLink(joinPath(parent, e.name)).catch(() => "")));
    }
  }
  for (const e of ended) {
    if (linked.has(e.name)) continue;
    const [, base, kind] = LEFTOVER.exec(e.name)!;
    if (kind === "old" && (await fs.lkind(joinPath(parent, base)).catch(() => null)) === null) continue;
    await fs.removeTree(joinPath(parent, e.name)).catch(() => {});
  }
}

/** The folder names a save of `base` writes beside it: `.base.save-<tag>`. */
const saveFolderPattern = (base: string): RegExp =>
  new RegExp(`^\\.${base.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.save-[0-9a-z-]+$`);

/** A runtime failure as our ConfigError naming the call and path (our own errors pass through). */
function fsError(op: string, what: string, path: string, err: unknown): Error {
  if (err instanceof LoraError) return err;
  const why = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return new ConfigError(`${op}: could not ${what} ${path} (${why})`);
}

async function step<T>(op: string, what: string, path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw fsError(op, what, path, err);
  }
}

/** Every entry under `root` as relative paths (directories before their contents), links not followed. */
async function walk(fs: Required<FsOps>, root: string, rel = ""): Promise<[string, EntryKind][]> {
  const out: [string, EntryKind][] = [];
  for (const e of await fs.readDir(rel === "" ? root : joinPath(root, rel))) {
    const r = rel === "" ? e.name : `${rel}/${e.name}`;
    out.push([r, e.kind]);
    if (e.kind === "dir") out.push(...await walk(fs, root, r));
  }
  return out;
}

/**
 * Saves a set of files (paths relative to `dir` → contents) all-or-nothing: a reader of `dir` sees the
 * complete previous save or the complete new one, also when the writer is killed midway or two saves
 * race (the last switch wins, each switch is one whole save). How: the files are written in full into a
 * new folder `.<name>.save-<tag>` beside `dir`, files of the previous save not being replaced are carried
 * over (hard links, copies where links fail) unless `drop` says otherwise, and then `dir` is switched to
 * the new folder with one rename of a symbolic link; `dir` becomes that link. A real directory at `dir`
 * (the first save into it) is moved aside just before the switch and removed after it; the previous save
 * folder is removed after the switch too. A save killed midway leaves the target as it was, plus an
 * unfinished `.save-` folder beside it; the next save into the same parent folder removes such leftovers
 * once their process is gone (the folders' names carry the writer's pid and machine; where that cannot be
 * checked, after {@link STALE_SAVE_AGE_MS}), never the folder of a save still running or one a target
 * points at. `dir` being a regular file (or a link to one) is a ConfigError
 * and the file stays untouched; so is a file of the previous save standing where the new save needs a
 * directory, or a directory where it needs a file. Runtime failures come back as ConfigErrors naming
 * `opts.op` and the path.
 */
export async function writeDirAtomic(
  dir: string,
  files: Record<string, Uint8Array | string>,
  opts: WriteDirOptions,
): Promise<void> {
  const { op } = opts;
  if (typeof dir !== "string" || dir === "") {
    throw new ConfigError(`${op}: dir must be a non-empty path string, got ${JSON.stringify(dir)}`);
  }
  const fs = await fsFor(op);
  let target = dir.replace(/(.)[\\/]+$/, "$1");
  let kind = await step(op, "inspect", target, () => fs.lkind(target));
  if (kind === "symlink") {
    const link = await step(op, "read the link", target, () => fs.readLink(target));
    if (!saveFolderPattern(basename(target)).test(link)) {
      // The user's own link: save where it leads, leaving the link as it is.
      const followed = await step(op, "inspect", target, () => fs.kind(target));
      if (followed !== "dir") {
        throw new ConfigError(
          `${op}: ${dir} is a link to ${followed === "file" ? "a file" : "nothing"} (${link}), not a ` +
            `directory; it was left untouched`,
        );
      }
      target = await step(op, "resolve", target, () => fs.realPath(target));
      kind = await step(op, "inspect", target, () => fs.lkind(target));
    }
  }
  if (kind === "file") {
    throw new ConfigError(`${op}: ${dir} is a file, not a directory; it was left untouched`);
  }
  const parent = dirname(target), base = basename(target);
  // The previous save: the folder our link points at, a real directory, or none.
  let previous: string | null = null;
  if (kind === "symlink") {
    previous = joinPath(
      parent,
      await step(op, "read the link", target, () => fs.readLink(target)),
    );
  } else if (kind === "dir") previous = target;
  const old = previous === null ? [] : await step(op, "list", previous, () => walk(fs, previous!));
  const oldKinds = new Map(old);
  const names = Object.keys(files);
  const wanted = new Set<string>();
  for (const name of names) {
    const parts = name.split("/");
    for (let i = 1; i < parts.length; i++) wanted.add(parts.slice(0, i).join("/"));
  }
  for (const name of names) {
    if (oldKinds.get(name) === "dir") {
      throw new ConfigError(`${op}: ${joinPath(target, name)} is a directory; cannot replace it with a file`);
    }
  }
  for (const d of wanted) {
    const k = oldKinds.get(d);
    if (k !== undefined && k !== "dir") {
      throw new ConfigError(`${op}: ${joinPath(target, d)} is a file where the save needs a directory`);
    }
  }
  await step(op, "create the directory", parent, () => fs.mkdirp(parent));
  const fresh = joinPath(parent, `.${base}.save-${randomTag()}`);
  try {
    await step(op, "create the directory", fresh, () => fs.mkdirp(fresh));
    for (const d of [...wanted].sort()) {
      await step(op, "create the directory", joinPath(fresh, d), () => fs.mkdirp(joinPath(fresh, d)));
    }
    for (const name of names) {
      const path = joinPath(fresh, name);
      await step(op, "write", path, () => fs.writeFile(path, encode(files[name])));
    }
    // Carry what the previous save held beside the files being replaced.
    for (const [rel, k] of old) {
      if (rel in files || wanted.has(rel) || (k !== "dir" && opts.drop?.(rel))) continue;
      const from = joinPath(previous!, rel), to = joinPath(fresh, rel);
      if (k === "dir") await step(op, "create the directory", to, () => fs.mkdirp(to));
      else if (k === "symlink") {
        const t = await step(op, "read the link", from, () => fs.readLink(from));
        await step(op, "link", to, () => fs.symlink(t, to));
      } else {
        try {
          await fs.link(from, to);
        } catch {
          const bytes = await step(op, "read", from, () => fs.readFile(from));
          await step(op, "write", to, () => fs.writeFile(to, bytes));
        }
      }
    }
  } catch (err) {
    await fs.removeTree(fresh).catch(() => {});
    throw err;
  }
  await switchTo(fs, op, target, fresh, kind === "dir");
  // The folder our link pointed at (a real directory was moved aside and removed by switchTo).
  if (kind === "symlink") await fs.removeTree(previous!).catch(() => {});
  await removeLeftovers(fs, parent).catch(() => {});
}

/** Points `target` at the complete folder `fresh` with one rename (two where a real directory is there). */
async function switchTo(
  fs: Required<FsOps>,
  op: string,
  target: string,
  fresh: string,
  realDirThere: boolean,
): Promise<void> {
  const parent = dirname(target), base = basename(target);
  const linkTmp = joinPath(parent, `.${base}.link-${randomTag()}`);
  let linked = true;
  try {
    await fs.symlink(basename(fresh), linkTmp);
  } catch {
    linked = false; // no symbolic links here (Windows without the privilege): the folder itself moves
  }
  const aside = joinPath(parent, `.${base}.old-${randomTag()}`);
  if (realDirThere) {
    try {
      await fs.rename(target, aside);
    } catch (err) {
      // A racing save moved it first: nothing to move aside any more.
      if (!isNotFoundError(err)) {
        if (linked) await fs.remove(linkTmp).catch(() => {});
        await fs.removeTree(fresh).catch(() => {});
        throw fsError(op, "replace", target, err);
      }
    }
  }
  try {
    await fs.rename(linked ? linkTmp : fresh, target);
  } catch (err) {
    if (linked) await fs.remove(linkTmp).catch(() => {});
    await fs.removeTree(fresh).catch(() => {});
    if (realDirThere) await fs.rename(aside, target).catch(() => {});
    throw fsError(op, "replace", target, err);
  }
  if (realDirThere) await fs.removeTree(aside).catch(() => {});
}

/** Resolves a directory given to a loader once, so that all its files come from one save. */
export async function resolveDir(dir: string): Promise<string> {
  const fs = await fsFor("resolveDir");
  try {
    return (await fs.lkind(dir)) === "symlink" ? await fs.realPath(dir) : dir;
  } catch {
    return dir;
  }
}
