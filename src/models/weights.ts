/**
 * Llama checkpoints in transformers' layout: `config.json` plus `model.safetensors`, or shards listed by
 * `model.safetensors.index.json`. Loading checks keys strictly in both directions (naming the key) and
 * converts F32 / F16 / BF16 / F64 to the model's dtype; saving writes what `save_pretrained` writes.
 * @module
 */
import type { Module } from "../nn/module.ts";
import type { Tensor } from "../tensor/mod.ts";
import { type RawTensorEntry, readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { joinPath, pathKind, readFileBytes, readFileText, writeDirAtomic } from "../io/fs.ts";
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

interface RawCheckpoint {
  config: Record<string, unknown> | string;
  shards: { name: string; bytes: Uint8Array }[];
}

/** Reads config and weight bytes from a directory (single file or sharded). */
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
    return { config, shards: [{ name: single, bytes: await readFileBytes(single) }] };
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
    shards.push({ name: path, bytes: await readFileBytes(path) });
  }
  return { config, shards };
}

/**
 * Builds a model with `build(config)` (shape-only weights) and fills every parameter from the
 * checkpoint. Missing keys (except `lm_head.weight` of a tied model), unexpected keys, shape mismatches
 * and non-float dtypes are FormatErrors naming the key and `where` (the public call).
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
    raw = { config: source.config, shards: list.map((bytes, i) => ({ name: `weights[${i}]`, bytes })) };
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
  const found = new Map<string, { shape: number[]; data: ArrayLike<number>; from: string }>();
  for (const shard of raw.shards) {
    let file;
    try {
      file = readSafetensors(shard.bytes);
    } catch (e) {
      throw new FormatError(`${where}: ${shard.name}: ${(e as Error).message}`);
    }
    for (const [key, t] of file.tensors) {
      if (isIgnorableKey(key)) continue;
      if (found.has(key)) {
        throw new FormatError(
          `${where}: ${key} appears in both ${found.get(key)!.from} and ${shard.name}`,
        );
      }
      if (!(key in own)) {
        throw new FormatError(
          `${where}: unexpected key ${key} in ${shard.name} (not a parameter of this model)`,
        );
      }
      if (!FLOAT_DTYPES.has(t.dtype)) {
        throw new FormatError(
          `${where}: ${key} has dtype ${t.dtype}; expected F32, F16 or BF16`,
        );
      }
      const want = own[key].shape;
      if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i])) {
        throw new FormatError(
          `${where}: ${key} has shape [${t.shape}] but the config implies [${want}]`,
        );
      }
      found.set(key, { shape: t.shape, data: t.data as ArrayLike<number>, from: shard.name });
    }
  }
  const tied = config.tieWordEmbeddings;
  const missing = Object.keys(own).filter((k) => !found.has(k) && !(tied && k === "lm_head.weight"));
  if (missing.length > 0) {
    const list = missing.slice(0, 8).join(", ") + (missing.length > 8 ? `, … (${missing.length})` : "");
    throw new FormatError(`${where}: missing keys: ${list}`);
  }
  // A tied head is the embedding table itself; a stored copy of it is ignored, as transformers does.
  if (tied) found.delete("lm_head.weight");
  model.loadStateDict(Object.fromEntries(found), { strict: false });
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
