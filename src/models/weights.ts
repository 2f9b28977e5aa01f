/**
 * Llama checkpoints in transformers' layout: `config.json` plus `model.safetensors`, or shards listed by
 * `model.safetensors.index.json`. Loading checks keys strictly in both directions (naming the key) and
 * converts F32 / F16 / BF16 / F64 to the model's dtype; saving writes what `save_pretrained` writes.
 * @module
 */
import type { Module } from "../nn/module.ts";
import type { Tensor } from "../tensor/mod.ts";
import {
  decodeSafetensorsData,
  dtypeBytes,
  type RawTensorEntry,
  readSafetensorsHeader,
  type SafetensorsEntry,
  type SafetensorsHeader,
  writeSafetensors,
} from "../io/safetensors.ts";
import {
  bytesRangeReader,
  type FileRangeReader,
  joinPath,
  openFileReader,
  pathKind,
  readFileText,
  writeDirAtomic,
} from "../io/fs.ts";
import type { ByteUpload, UploadFormat } from "../backend/backend.ts";
import { numberToBf16Bits, numberToF16Bits } from "../core/half.ts";
import { modulesWithAdapters } from "../nn/adapter_hook.ts";
import { type LlamaConfig, llamaConfigToJson, parseLlamaConfig } from "./config.ts";
import { ConfigError, FormatError } from "../core/errors.ts";

/** Where a checkpoint comes from: a directory path, or the config and safetensors bytes themselves. */
export type ModelSource = string | {
  /** config.json as an object or as its text. */
  config: Record<string, unknown> | string;
  /** model.safetensors, or every shard's bytes. */
  weights: Uint8Array | Uint8Array[];
};

/** A model as the loader and saver see it. */
export interface CheckpointModel extends Module {
  /** The parsed config. */
  readonly config: LlamaConfig;
  /** Parameter dtype. */
  readonly dtype: string;
  /** The checkpoint's generation_config.json, saved back beside config.json (null or absent: none). */
  readonly generationConfig?: { source: Record<string, unknown> } | null;
}

/** Float dtypes a checkpoint may store; everything else (quantized ints, ...) is refused. */
const FLOAT_DTYPES = new Set(["F32", "F16", "BF16", "F64"]);

/** Keys some older checkpoints carry that transformers itself ignores on load. */
function isIgnorableKey(key: string): boolean {
  return key.endsWith(".rotary_emb.inv_freq");
}

/** One weight file: its name for messages and how to open it for range reads. */
interface Shard {
  name: string;
  open(): Promise<FileRangeReader>;
}

interface RawCheckpoint {
  config: Record<string, unknown> | string;
  shards: Shard[];
}

/** A shard on disk, opened only when the loader reads it. */
function fileShard(path: string): Shard {
  return { name: path, open: () => openFileReader(path) };
}

/** Finds config and weight files in a directory (single file or sharded); reads only the config and index. */
async function readCheckpointDir(dir: string, where: string): Promise<RawCheckpoint> {
  if ((await pathKind(dir)) !== "dir") {
    throw new FormatError(`${where}: ${dir} is not a directory`);
  }
  const configPath = joinPath(dir, "config.json");
  if ((await pathKind(configPath)) !== "file") {
    throw new FormatError(`${where}: ${configPath} does not exist`);
  }
  const config = await readFileText(configPath);
  const single = joinPath(dir, "model.safetensors");
  if ((await pathKind(single)) === "file") {
    return { config, shards: [fileShard(single)] };
  }
  const indexPath = joinPath(dir, "model.safetensors.index.json");
  if ((await pathKind(indexPath)) !== "file") {
    throw new FormatError(
      `${where}: ${dir} has neither model.safetensors nor model.safetensors.index.json ` +
        `(PyTorch .bin checkpoints are not supported; convert them to safetensors)`,
    );
  }
  let index: { weight_map?: Record<string, unknown> };
  try {
    index = JSON.parse(await readFileText(indexPath));
  } catch (e) {
    throw new FormatError(
      `${where}: ${indexPath} is not valid JSON (${(e as Error).message})`,
    );
  }
  const map = index?.weight_map;
  if (map === null || typeof map !== "object" || Array.isArray(map)) {
    throw new FormatError(`${where}: ${indexPath} has no weight_map object`);
  }
  const files = [...new Set(Object.values(map))];
  for (const f of files) {
    if (typeof f !== "string" || f.includes("/") || f.includes("\\") || f.startsWith(".")) {
      throw new FormatError(
        `${where}: ${indexPath} names an invalid shard file ${JSON.stringify(f)}`,
      );
    }
  }
  const shards = [];
  for (const f of files as string[]) {
    const path = joinPath(dir, f);
    if ((await pathKind(path)) !== "file") {
      throw new FormatError(
        `${where}: shard ${path} listed in the index does not exist`,
      );
    }
    shards.push(fileShard(path));
  }
  return { config, shards };
}

/**
 * Bytes of one read of the streaming loader (a multiple of 8, so a piece never splits an element and
 * every piece starts word-aligned in the tensor). Large enough that the per-read cost vanishes, small
 * enough that the readers' staging buffers stay small next to a model. With {@link READERS} these are
 * the fastest settings measured on the H200 (Llama-3.2-1B f32, 4.94 GB: 1.48 s; 3 readers of 64 MiB
 * 1.64-1.93 s; 1 reader 2.34 s).
 */
let PIECE_BYTES = 16 << 20;

/** @internal Sets the piece size (a positive multiple of 8; null restores the default), so tests cut tiny tensors. */
export function _setPieceBytesForTesting(bytes: number | null): void {
  PIECE_BYTES = bytes ?? 16 << 20;
}

/**
 * Bytes handed to the device between waits for it to finish them (null: never wait). The device keeps a
 * host copy of every written piece until it has copied it into the buffer; waiting now and then bounds
 * that memory, at the price of the wait.
 */
let SYNC_EVERY_BYTES: number | null = null;

/** @internal Sets {@link SYNC_EVERY_BYTES} (benchmarks compare the settings). */
export function _setSyncEveryBytesForTesting(bytes: number | null): void {
  SYNC_EVERY_BYTES = bytes;
}

/** Where a load's time went (milliseconds by phase) and how much it moved: for bench/load_bench.ts. */
export interface LoadStats {
  /** Bytes of tensor data read. */
  bytes: number;
  /**
   * Milliseconds by phase: `open` (opening files, reading and checking headers), `read` (waiting for the
   * file beyond what overlapped the rest), `write` (handing bytes to the device), `convert` (host
   * conversions), `finish` (device-side conversions queued when a tensor is complete).
   */
  phases: Record<string, number>;
  /** Tensors loaded. */
  tensors: number;
}

let stats: LoadStats = { bytes: 0, phases: {}, tensors: 0 };

/** @internal The counters of the loads since {@link resetLoadStats} (benchmarks read them). */
export function loadStats(): LoadStats {
  return stats;
}

/** @internal Restarts {@link loadStats}. */
export function resetLoadStats(): void {
  stats = { bytes: 0, phases: {}, tensors: 0 };
}

function timed<T>(phase: string, f: () => T): T {
  const t0 = performance.now();
  try {
    return f();
  } finally {
    stats.phases[phase] = (stats.phases[phase] ?? 0) + performance.now() - t0;
  }
}

async function timedAsync<T>(phase: string, f: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await f();
  } finally {
    stats.phases[phase] = (stats.phases[phase] ?? 0) + performance.now() - t0;
  }
}

/** Typed arrays use the platform's byte order; the format is little-endian. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Encoding of a file dtype the device may take as it is. */
const WIRE: Record<string, UploadFormat | undefined> = { F32: "f32", F16: "f16", BF16: "bf16" };

/**
 * Fills one tensor from the pieces of its bytes, in order: straight to the device where the backend
 * takes the file's encoding (converting on the device if needed), else converted on the host into the
 * target dtype's encoding and then streamed, else (a backend without streamed uploads: the CPU) into a
 * host array uploaded at the end.
 */
class TensorFill {
  readonly #fileDType: string;
  readonly #target: Tensor;
  readonly #upload: ByteUpload | null;
  /** The dtype's own encoding when pieces are converted on the host before {@link #upload}. */
  readonly #hostTo: UploadFormat | null;
  readonly #host: Float32Array | Float64Array | null;

  constructor(fileDType: string, target: Tensor) {
    this.#fileDType = fileDType;
    this.#target = target;
    const be = target.device.backend;
    const dtype = target.dtype;
    let upload: ByteUpload | null = null;
    let hostTo: UploadFormat | null = null;
    const wire = WIRE[fileDType];
    if (be.beginUpload !== undefined) {
      // Rows stay whole should the tensor be split across buffers (an embedding larger than one binding).
      const rowLength = target.shape.length > 0 ? target.shape[target.shape.length - 1] : 1;
      if (wire !== undefined) upload = be.beginUpload(target.size, dtype, wire, rowLength);
      if (upload === null && (dtype === "f32" || dtype === "f16")) {
        upload = be.beginUpload(target.size, dtype, dtype, rowLength);
        hostTo = dtype;
      }
    }
    this.#upload = upload;
    this.#hostTo = hostTo;
    this.#host = upload !== null
      ? null
      : dtype === "f64"
      ? new Float64Array(target.size)
      : new Float32Array(target.size);
  }

  /** Takes the piece of the tensor's file bytes that starts at byte `offset`. */
  write(piece: Uint8Array, offset: number): void {
    const srcSize = dtypeBytes(this.#fileDType);
    if (this.#upload !== null && this.#hostTo === null) {
      timed("write", () => this.#upload!.write(piece, offset));
      return;
    }
    const first = offset / srcSize;
    if (this.#upload !== null) {
      const bytes = timed(
        "convert",
        () => encode(decodeSafetensorsData(this.#fileDType, piece) as Float32Array, this.#hostTo!),
      );
      timed("write", () => this.#upload!.write(bytes, first * (this.#hostTo === "f32" ? 4 : 2)));
      return;
    }
    const host = this.#host!;
    if (LITTLE_ENDIAN && this.#fileDType === "F32" && host instanceof Float32Array) {
      timed("write", () => new Uint8Array(host.buffer, offset, piece.length).set(piece));
    } else {
      timed("convert", () => host.set(decodeSafetensorsData(this.#fileDType, piece) as Float32Array, first));
    }
  }

  /** Gives the target its storage. */
  finish(): void {
    const be = this.#target.device.backend;
    const storage = timed(
      "finish",
      () => this.#upload !== null ? this.#upload.finish() : be.upload(this.#host!, this.#target.dtype),
    );
    this.#target._replaceStorage(storage);
  }

  abort(): void {
    this.#upload?.abort();
  }
}

/** Decoded values in an upload encoding: f32 as its bytes, f16 as its bit patterns. */
function encode(values: ArrayLike<number>, to: UploadFormat): Uint8Array {
  if (to === "f32") {
    const f = values instanceof Float32Array ? values : Float32Array.from(values);
    return new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
  }
  const bits = new Uint16Array(values.length);
  if (to === "f16") { for (let i = 0; i < values.length; i++) bits[i] = numberToF16Bits(values[i]); }
  else for (let i = 0; i < values.length; i++) bits[i] = numberToBf16Bits(values[i]);
  return new Uint8Array(bits.buffer);
}

/** A tensor to load: where its bytes lie in its shard, and the parameter they fill. */
interface Planned {
  entry: SafetensorsEntry;
  target: Tensor;
}

/** Reads in flight at once per shard (each with its own file handle and staging buffer). */
let READERS = 6;

/** @internal Sets {@link READERS} (null: the default), for benchmarks and tests. */
export function _setReadersForTesting(n: number | null): void {
  READERS = n ?? 6;
}

/**
 * Streams one shard's planned tensors from the file into their parameters: the data is cut into pieces
 * of at most {@link PIECE_BYTES}, and {@link READERS} workers, each with its own file handle and staging
 * buffer, take the pieces in file order, read one and hand it to the device, so that reads run in
 * parallel with each other and with the uploads, and no whole-file (or whole-tensor) copy is made on the
 * host. A tensor's storage is made when its first piece is taken and given to it after its last.
 */
async function streamShard(
  shard: Shard,
  first: FileRangeReader,
  dataStart: number,
  plan: Planned[],
): Promise<void> {
  const pieces: { p: Planned; offset: number; length: number }[] = [];
  let largest = 0;
  const remaining = new Map<Planned, number>();
  for (const p of plan) {
    const bytes = p.entry.end - p.entry.begin;
    let count = 0;
    for (let offset = 0; offset < bytes; offset += PIECE_BYTES) {
      const length = Math.min(PIECE_BYTES, bytes - offset);
      pieces.push({ p, offset, length });
      largest = Math.max(largest, length);
      count++;
    }
    remaining.set(p, count);
  }
  const fills = new Map<Planned, TensorFill>();
  const readers: FileRangeReader[] = [first];
  let taken = 0;
  let sinceSync = 0;
  let failure: { error: unknown } | null = null;
  const work = async (reader: FileRangeReader): Promise<void> => {
    const staging = new Uint8Array(largest);
    while (failure === null && taken < pieces.length) {
      const { p, offset, length } = pieces[taken++];
      let fill = fills.get(p);
      if (fill === undefined) fills.set(p, fill = new TensorFill(p.entry.dtype, p.target));
      const bytes = staging.subarray(0, length);
      await timedAsync("read", () => reader.read(bytes, dataStart + p.entry.begin + offset));
      if (failure !== null) return;
      fill.write(bytes, offset);
      stats.bytes += length;
      sinceSync += length;
      const left = remaining.get(p)! - 1;
      remaining.set(p, left);
      if (left === 0) {
        fill.finish();
        fills.delete(p);
        stats.tensors++;
      }
      if (SYNC_EVERY_BYTES !== null && sinceSync >= SYNC_EVERY_BYTES) {
        sinceSync = 0;
        await timedAsync("sync", () => p.target.device.backend.sync());
      }
    }
  };
  try {
    const workers = Math.max(1, Math.min(READERS, pieces.length));
    for (let w = 1; w < workers; w++) readers.push(await shard.open());
    await Promise.all(readers.map((r) =>
      work(r).catch((error) => {
        failure ??= { error };
      })
    ));
    if (failure !== null) throw (failure as { error: unknown }).error;
    // Tensors of no bytes (a zero in the shape) have no piece.
    for (const p of plan) {
      if (p.entry.end === p.entry.begin) {
        new TensorFill(p.entry.dtype, p.target).finish();
        stats.tensors++;
      }
    }
  } catch (e) {
    for (const f of fills.values()) f.abort();
    throw e;
  } finally {
    for (const r of readers.slice(1)) r.close();
  }
}

/**
 * Builds a model with `build(config)` (shape-only weights) and fills every parameter from the
 * checkpoint. Missing keys (except `lm_head.weight` of a tied model), unexpected keys, shape mismatches
 * and non-float dtypes are FormatErrors naming the key and `where` (the public call), raised after
 * reading every shard's header and before any tensor data is read. The data is streamed from the files
 * in pieces, several reads at once, straight into device memory (F32 → f32 and F16 → f16 as they are, BF16 / F16 → f32 widened
 * on the device), so no whole file or tensor is copied on the host.
 */
export async function loadLlamaWeights<M extends CheckpointModel>(
  source: ModelSource,
  build: (config: LlamaConfig) => M,
  where = "LlamaForCausalLM.fromPretrained",
): Promise<M> {
  let raw: RawCheckpoint;
  if (typeof source === "string") raw = await readCheckpointDir(source, where);
  else if (source && typeof source === "object" && "config" in source && "weights" in source) {
    const list = Array.isArray(source.weights) ? source.weights : [source.weights];
    if (list.length === 0 || list.some((b) => !(b instanceof Uint8Array))) {
      throw new FormatError(
        `${where}: weights must be a Uint8Array or a non-empty list of them`,
      );
    }
    raw = {
      config: source.config,
      shards: list.map((bytes, i) => {
        const name = `weights[${i}]`;
        return { name, open: () => Promise.resolve(bytesRangeReader(bytes, name)) };
      }),
    };
  } else {
    const got = source === null || typeof source !== "object"
      ? String(source)
      : `{ ${Object.keys(source).join(", ")} }`;
    throw new ConfigError(
      `${where}: source must be a directory path or { config, weights }, got ${got}`,
    );
  }
  const config = parseLlamaConfig(raw.config);
  const model = build(config);
  const own = model.stateDict();
  const opened: { shard: Shard; file: FileRangeReader; dataStart: number; plan: Planned[] }[] = [];
  const loaded: Tensor[] = [];
  try {
    const found = new Map<string, string>();
    for (const shard of raw.shards) {
      const t0 = performance.now();
      const file = await shard.open();
      opened.push({ shard, file, dataStart: 0, plan: [] });
      let header: SafetensorsHeader;
      try {
        header = await readSafetensorsHeader(file);
      } catch (e) {
        if (!(e instanceof FormatError)) throw e;
        throw new FormatError(`${where}: ${shard.name}: ${e.message}`);
      }
      stats.phases.open = (stats.phases.open ?? 0) + performance.now() - t0;
      const slot = opened[opened.length - 1];
      slot.dataStart = header.dataStart;
      for (const entry of header.entries) {
        const key = entry.name;
        if (isIgnorableKey(key)) continue;
        if (found.has(key)) {
          throw new FormatError(`${where}: ${key} appears in both ${found.get(key)} and ${shard.name}`);
        }
        if (!(key in own)) {
          throw new FormatError(
            `${where}: unexpected key ${key} in ${shard.name} (not a parameter of this model)`,
          );
        }
        if (!FLOAT_DTYPES.has(entry.dtype)) {
          throw new FormatError(
            `${where}: ${key} has dtype ${entry.dtype}; expected F32, F16 or BF16`,
          );
        }
        const want = own[key].shape;
        if (entry.shape.length !== want.length || entry.shape.some((d, i) => d !== want[i])) {
          throw new FormatError(
            `${where}: ${key} has shape [${entry.shape}] but the config implies [${want}]`,
          );
        }
        found.set(key, shard.name);
        slot.plan.push({ entry, target: own[key] });
      }
    }
    const tied = config.tieWordEmbeddings;
    const missing = Object.keys(own).filter((k) => !found.has(k) && !(tied && k === "lm_head.weight"));
    if (missing.length > 0) {
      const list = missing.slice(0, 8).join(", ") + (missing.length > 8 ? `, … (${missing.length})` : "");
      throw new FormatError(`${where}: missing keys: ${list}`);
    }
    for (const slot of opened) {
      // A tied head is the embedding table itself; a stored copy of it is ignored, as transformers does.
      if (tied) slot.plan = slot.plan.filter((p) => p.entry.name !== "lm_head.weight");
      // A parameter the model holds twice (shared) is filled once.
      slot.plan = slot.plan.filter((p) => {
        if (loaded.includes(p.target)) return false;
        loaded.push(p.target);
        return true;
      });
    }
    for (const slot of opened) await streamShard(slot.shard, slot.file, slot.dataStart, slot.plan);
  } catch (e) {
    // Nothing half-loaded stays on the device.
    for (const t of loaded) if (!t.isMeta) t.dispose();
    throw e;
  } finally {
    for (const slot of opened) slot.file.close();
  }
  return model;
}

/** Options of {@link saveModel}. */
export interface SaveModelOptions {
  /** Stored dtype (default: F32 for f32/f64 models, F16 for f16 ones). */
  dtype?: "F32" | "F16" | "BF16";
  /** Largest shard in bytes before splitting into `model-0000i-of-0000n.safetensors` (default 2 GiB). */
  maxShardBytes?: number;
}

const TORCH_DTYPE = { F32: "float32", F16: "float16", BF16: "bfloat16" } as const;
const DTYPE_BYTES = { F32: 4, F16: 2, BF16: 2 } as const;

/**
 * The files `save_pretrained` would write for this model: `config.json` and `model.safetensors`, or
 * numbered shards plus `model.safetensors.index.json` past `maxShardBytes`. A tied lm_head is left out.
 * @throws {ConfigError} when adapters (LoRA) are still attached (merge them with mergeAndUnload first), or when a
 *   Linear is quantized (its weight holds packed codes)
 */
export async function modelToFiles(
  model: CheckpointModel,
  opts: SaveModelOptions = {},
): Promise<Record<string, Uint8Array | string>> {
  const adapted = modulesWithAdapters(model);
  if (adapted.length > 0) {
    const kinds = [...new Set(adapted.map(([, kind]) => kind))].join(" / ");
    const names = adapted.slice(0, 3).map(([name]) => name || "(the model itself)").join(", ");
    throw new ConfigError(
      `saveModel: ${adapted.length} modules still carry ${kinds} adapters (${names}${
        adapted.length > 3 ? ", ..." : ""
      }); fold them in with mergeAndUnload(model) first, or save the adapter with saveAdapter`,
    );
  }
  // A quantized Linear's weight holds packed codes, not values: saving it under `weight` would write a
  // checkpoint no loader reads correctly. Refuse rather than write something silently wrong.
  const quantized = model.namedModules().filter(([, m]) =>
    (m as { quantization?: unknown }).quantization != null
  );
  if (quantized.length > 0) {
    const names = quantized.slice(0, 3).map(([name]) => name).join(", ");
    throw new ConfigError(
      `saveModel: ${quantized.length} Linears are quantized (${names}${
        quantized.length > 3 ? ", ..." : ""
      }); a quantized base cannot be saved as a checkpoint: save the f32 model before quantizeModel, or ` +
        `save only the adapter with saveAdapter`,
    );
  }
  const dtype = opts.dtype ?? (model.dtype === "f16" ? "F16" : "F32");
  if (!(dtype in TORCH_DTYPE)) {
    throw new ConfigError(`saveModel: dtype must be F32, F16 or BF16, got ${dtype}`);
  }
  const maxShard = opts.maxShardBytes ?? 2 ** 31;
  if (!(maxShard > 0)) throw new ConfigError(`saveModel: maxShardBytes must be positive, got ${maxShard}`);
  const sd = model.stateDict();
  if (model.config.tieWordEmbeddings) delete sd["lm_head.weight"];
  const shards: [string, Tensor][][] = [[]];
  let bytes = 0;
  for (const entry of Object.entries(sd)) {
    const size = entry[1].size * DTYPE_BYTES[dtype];
    if (bytes > 0 && bytes + size > maxShard) {
      shards.push([]);
      bytes = 0;
    }
    shards[shards.length - 1].push(entry);
    bytes += size;
  }
  const files: Record<string, Uint8Array | string> = {};
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  const pad = (n: number) => String(n).padStart(5, "0");
  for (let i = 0; i < shards.length; i++) {
    const name = shards.length === 1
      ? "model.safetensors"
      : `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`;
    const entries: Record<string, RawTensorEntry> = {};
    for (const [key, t] of shards[i]) {
      entries[key] = { dtype, shape: [...t.shape], data: await t.data() };
      weightMap[key] = name;
      totalSize += t.size * DTYPE_BYTES[dtype];
    }
    files[name] = writeSafetensors(entries, { format: "pt" });
  }
  if (shards.length > 1) {
    const sorted = Object.fromEntries(
      Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    );
    files["model.safetensors.index.json"] =
      JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sorted }, null, 2) +
      "\n";
  }
  files["config.json"] = JSON.stringify(llamaConfigToJson(model.config, TORCH_DTYPE[dtype]), null, 2) + "\n";
  if (model.generationConfig) {
    files["generation_config.json"] = JSON.stringify(model.generationConfig.source, null, 2) + "\n";
  }
  return files;
}

const WEIGHT_FILE = /^model(-\d{5}-of-\d{5})?\.safetensors$/;
const INDEX_FILE = "model.safetensors.index.json";

/**
 * Writes {@link modelToFiles}' files into `dir` (created if needed), all-or-nothing across the files
 * (writeDirAtomic in src/io/fs.ts: a complete new folder switched in by one rename; `dir` becomes a
 * symbolic link to it). Weight files of an earlier save in another layout (a single file vs shards) are
 * not carried over, since a loader would otherwise find the stale ones first; other files in `dir` are.
 */
export async function saveModel(
  model: CheckpointModel,
  dir: string,
  opts: SaveModelOptions = {},
  op = "saveModel",
): Promise<void> {
  const files = await modelToFiles(model, opts);
  // Only names a save of ours writes count as stale weights.
  await writeDirAtomic(dir, files, {
    op,
    drop: (name) => WEIGHT_FILE.test(name) || name === INDEX_FILE,
  });
}
