/**
 * Autoregressive decoding: a key/value cache so each new token costs one position of compute, and
 * token choice by greedy argmax or seeded sampling (temperature, then top-k, then top-p, in the order
 * transformers applies its logits warpers).
 *
 * Two loops produce the same tokens. The device loop ({@link generateTokens} on a Llama-family model)
 * chooses each token on the device and feeds it to the next step there (src/models/decode.ts), reading
 * the chosen ids back once every `readEvery` steps; rows that meet EOS inside a window are cut there.
 * The reference loop ({@link generateTokensReference}) reads each step's logits back and chooses on the
 * host with the kernels' CPU twins. Draws are counter-based (step · batch + row under the seed), so the
 * two loops draw the same random numbers whatever the window.
 * @module
 */
import { concat, fromStorage, keep, type Tensor } from "../tensor/mod.ts";
import { nextSeed, type Rng } from "../core/random.ts";
import { ConfigError, ShapeError } from "../core/errors.ts";
import { checkOptionalBoolean, checkOptionKeys } from "../core/options.ts";
import { argmaxRow } from "../backend/kernels/argmax.ts";
import { drawUniform, sampleRow } from "../backend/kernels/sample_token.ts";
import {
  chooseTokens,
  DecodeConstants,
  type DecodeKernels,
  decodeStep,
  isDecoderModel,
  StaticKVCache,
  type TokenChoice,
} from "./decode.ts";
import { RopeTables } from "./rope.ts";

type RopeParameters = ConstructorParameters<typeof RopeTables>[1];

/** Names of {@link GenerateOptions}. */
const GENERATE_OPTION_KEYS = [
  "maxNewTokens",
  "greedy",
  "temperature",
  "topK",
  "topP",
  "seed",
  "eosTokenId",
  "readEvery",
] as const;

/** Steps between reads of the chosen tokens in the device loop, unless told otherwise. */
export const DEFAULT_READ_EVERY = 16;

/** Options of `generate`. */
export interface GenerateOptions {
  /**
   * How many tokens to add to each row (fewer where a row meets `eosTokenId`). Prompt plus new tokens may
   * run past `max_position_embeddings`: not refused, RoPE extrapolates (see {@link generateTokens}).
   */
  maxNewTokens: number;
  /** Argmax decoding (default true); false samples. */
  greedy?: boolean;
  /** Sampling only: logits are divided by it (default 1). */
  temperature?: number;
  /** Sampling only: keep the k most likely tokens (ties with the k-th kept); default: no limit. */
  topK?: number;
  /** Sampling only: keep the smallest set of most likely tokens whose probability reaches p; default 1. */
  topP?: number;
  /** Sampling only: seeds the draw, so equal seeds give equal tokens (default: from the global stream). */
  seed?: number;
  /**
   * A row stops after producing this token (or any of these), which is kept in its output. A model's
   * `generate` defaults it to the checkpoint's EOS id(s); null never stops early.
   */
  eosTokenId?: number | number[] | null;
  /**
   * The device loop reads the chosen tokens back every this many steps (default
   * {@link DEFAULT_READ_EVERY}); the tokens do not depend on it, only how long a row that met EOS keeps
   * the device busy (at most this many steps).
   */
  readEvery?: number;
}

/** Per-layer keys and values of the positions seen so far, as [batch, kvHeads, length, headDim]. */
export class KVCache {
  /** Keys per layer (null before the first forward). */
  readonly keys: (Tensor | null)[];
  /** Values per layer (null before the first forward). */
  readonly values: (Tensor | null)[];

  /** An empty cache for a model of `numLayers` decoder layers. */
  constructor(numLayers: number) {
    this.keys = new Array(numLayers).fill(null);
    this.values = new Array(numLayers).fill(null);
  }

  /** Number of cached positions (0 before the first forward). */
  get length(): number {
    return this.keys[0]?.shape[2] ?? 0;
  }

  /** Appends one layer's new keys and values along the sequence axis; returns the full ones. */
  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const oldK = this.keys[layer], oldV = this.values[layer];
    const fullK = oldK === null ? k : concat([oldK, k], 2);
    const fullV = oldV === null ? v : concat([oldV, v], 2);
    if (oldK !== null && oldK !== fullK) oldK.dispose();
    if (oldV !== null && oldV !== fullV) oldV.dispose();
    // Kept: the cache outlives the tidy scope of the step that extended it.
    this.keys[layer] = keep(fullK);
    this.values[layer] = keep(fullV);
    return { k: fullK, v: fullV };
  }

  /** Frees every cached tensor. */
  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(null);
    this.values.fill(null);
  }
}

/** What {@link generateTokens} needs from a model: one forward over new tokens that fills the cache. */
export interface IncrementalLM {
  /** Vocabulary size and layer count. */
  readonly config: { vocabSize: number; numHiddenLayers: number };
  /**
   * Runs `ids` [batch, seq] after the cached positions and returns the last position's logits
   * [batch, 1, vocab]. `attentionMask` covers cached and new positions [batch, past + seq].
   */
  forwardStep(
    ids: { data: Int32Array; shape: [number, number] },
    opts: { attentionMask: Int32Array; positionIds: Int32Array; cache: KVCache },
  ): Tensor;
}

/** Validated sampling settings. */
interface Sampler {
  greedy: boolean;
  temperature: number;
  topK: number;
  topP: number;
}

function checkOptions(
  opts: GenerateOptions,
  vocab: number,
): Sampler & { eos: Set<number>; readEvery: number; seed: number } {
  if (opts === null || typeof opts !== "object") throw new ConfigError(`generate: options must be an object`);
  checkOptionKeys(opts, GENERATE_OPTION_KEYS, "generate");
  checkOptionalBoolean(opts.greedy, "greedy", "generate");
  const { maxNewTokens } = opts;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) {
    throw new ConfigError(`generate: maxNewTokens must be a non-negative integer, got ${maxNewTokens}`);
  }
  const greedy = opts.greedy ?? true;
  if (greedy && (opts.temperature !== undefined || opts.topK !== undefined || opts.topP !== undefined)) {
    throw new ConfigError(
      `generate: temperature, topK and topP apply to sampling; pass greedy: false to sample`,
    );
  }
  const temperature = opts.temperature ?? 1;
  if (!(typeof temperature === "number" && temperature > 0 && Number.isFinite(temperature))) {
    throw new ConfigError(`generate: temperature must be a positive number, got ${opts.temperature}`);
  }
  const topK = opts.topK ?? 0;
  if (!Number.isInteger(topK) || topK < 0 || (opts.topK !== undefined && topK < 1)) {
    throw new ConfigError(`generate: topK must be a positive integer, got ${opts.topK}`);
  }
  const topP = opts.topP ?? 1;
  if (!(typeof topP === "number" && topP > 0 && topP <= 1)) {
    throw new ConfigError(`generate: topP must be in (0, 1], got ${opts.topP}`);
  }
  if (opts.seed !== undefined && !Number.isInteger(opts.seed)) {
    throw new ConfigError(`generate: seed must be an integer, got ${opts.seed}`);
  }
  const eosList = opts.eosTokenId === undefined || opts.eosTokenId === null ? [] : [opts.eosTokenId].flat();
  for (const e of eosList) {
    if (!Number.isInteger(e) || e < 0 || e >= vocab) {
      throw new ConfigError(`generate: eosTokenId ${e} is not a token id of a ${vocab}-token vocabulary`);
    }
  }
  const readEvery = opts.readEvery ?? DEFAULT_READ_EVERY;
  if (!Number.isInteger(readEvery) || readEvery < 1) {
    throw new ConfigError(`generate: readEvery must be a positive integer, got ${opts.readEvery}`);
  }
  const seed = (opts.seed ?? nextSeed()) >>> 0;
  return { greedy, temperature, topK, topP, eos: new Set(eosList), readEvery, seed };
}

/** Index of the largest value, the first one on ties (torch.argmax's rule). */
export function argmax(row: ArrayLike<number>): number {
  return argmaxRow(row);
}

/**
 * Draws a token from one row of logits after temperature, top-k and top-p filtering (transformers'
 * warper semantics: top-k keeps ties with the k-th value; top-p drops the least likely tokens whose
 * cumulative probability stays within 1 − p, always keeping the most likely one), with one uniform
 * number from `rng`. The device's sampling kernel makes the same choice from the same number
 * (`sampleRow` in src/backend/kernels/sample_token.ts).
 */
export function sampleToken(row: ArrayLike<number>, s: Sampler, rng: Rng): number {
  return sampleRow(row, s, rng.uniform());
}

/** A validated call: the options, and the left-padded prompt grid both loops start from. */
interface Prepared {
  s: ReturnType<typeof checkOptions>;
  maxNewTokens: number;
  batch: number;
  width: number;
  /** The prompt grid [batch, width], left-padded with each row's first token. */
  ids: Int32Array;
  /** Rotary positions of the grid (transformers fills padded positions with 1). */
  positions: Int32Array;
  /** Each row's padding, which is also its first real slot. */
  pads: Int32Array;
  /** 1 for real tokens, rows of width + maxNewTokens columns. */
  mask: Int32Array;
  out: number[][];
}

function prepare(model: IncrementalLM, promptIds: number[][], opts: GenerateOptions): Prepared {
  const vocab = model.config.vocabSize;
  const s = checkOptions(opts, vocab);
  if (
    !Array.isArray(promptIds) || promptIds.length === 0 ||
    promptIds.some((r) => !Array.isArray(r) || r.length === 0)
  ) {
    throw new ShapeError(`generate: promptIds must be a non-empty list of non-empty token lists`);
  }
  promptIds.forEach((row, b) =>
    row.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= vocab) {
        throw new ShapeError(`generate: token ${t} at row ${b}, position ${i} is not in [0, ${vocab})`);
      }
    })
  );
  const batch = promptIds.length;
  const width = Math.max(...promptIds.map((r) => r.length));
  const total = width + opts.maxNewTokens;
  const mask = new Int32Array(batch * total);
  const ids = new Int32Array(batch * width);
  const positions = new Int32Array(batch * width);
  const pads = new Int32Array(batch);
  promptIds.forEach((row, b) => {
    const pad = width - row.length;
    pads[b] = pad;
    for (let j = 0; j < width; j++) {
      ids[b * width + j] = j < pad ? row[0] : row[j - pad];
      mask[b * total + j] = j < pad ? 0 : 1;
      positions[b * width + j] = j < pad ? 1 : j - pad;
    }
  });
  const out = promptIds.map((r) => [...r]);
  return { s, maxNewTokens: opts.maxNewTokens, batch, width, ids, positions, pads, mask, out };
}

/** The first `len` columns of every mask row, as one [batch, len] grid. */
function maskPrefix(p: Prepared, len: number): Int32Array {
  const total = p.width + p.maxNewTokens;
  const m = new Int32Array(p.batch * len);
  for (let b = 0; b < p.batch; b++) m.set(p.mask.subarray(b * total, b * total + len), b * len);
  return m;
}

/**
 * Greedy or sampled decoding with a KV cache. Rows of different lengths are left-padded (masked, with
 * positions counted over real tokens only, as transformers' generate does). Returns each row's prompt
 * followed by its new tokens; a row stops after an `eosTokenId` token, the batch once all rows stopped.
 * A Llama-family model decodes on the device (tokens read back every `readEvery` steps); any other
 * {@link IncrementalLM} runs the reference loop. Both give the same tokens. `kernels` pins the step's
 * kernel choice (tests run the GEMV path on a software adapter with it).
 *
 * Past the model's `max_position_embeddings`: as transformers' generate, nothing is refused; positions go
 * on counting and RoPE (default, linear or llama3) rotates them with the same frequencies, i.e. it
 * extrapolates. The tokens are what the model computes there, but a model trained on shorter sequences
 * usually degrades past its length. (Training refuses such sequences: `train` and the demo CLI.)
 */
export async function generateTokens(
  model: IncrementalLM,
  promptIds: number[][],
  opts: GenerateOptions,
  kernels: DecodeKernels = {},
): Promise<number[][]> {
  if (isDecoderModel(model) && hasRope(model)) {
    return await generateOnDevice(model, prepare(model, promptIds, opts), kernels);
  }
  return await referenceLoop(model, prepare(model, promptIds, opts));
}

/**
 * The reference loop: every step reads the logits back and chooses on the host with the choice kernels'
 * CPU twins (the same counter-based draws as the device loop). Kept as the yardstick of
 * {@link generateTokens}, and for models that are only an {@link IncrementalLM}.
 */
export async function generateTokensReference(
  model: IncrementalLM,
  promptIds: number[][],
  opts: GenerateOptions,
): Promise<number[][]> {
  return await referenceLoop(model, prepare(model, promptIds, opts));
}

async function referenceLoop(model: IncrementalLM, p: Prepared): Promise<number[][]> {
  const { s, batch, width, out } = p;
  const vocab = model.config.vocabSize;
  if (p.maxNewTokens === 0) return out;
  const total = width + p.maxNewTokens;
  const done = new Array<boolean>(batch).fill(false);
  const cache = new KVCache(model.config.numHiddenLayers);
  let logits = model.forwardStep({ data: p.ids, shape: [batch, width] }, {
    attentionMask: maskPrefix(p, width),
    positionIds: p.positions,
    cache,
  });
  try {
    for (let step = 0; step < p.maxNewTokens; step++) {
      const values = await logits.data();
      logits.dispose();
      const next = new Int32Array(batch);
      for (let b = 0; b < batch; b++) {
        if (done[b]) {
          next[b] = out[b][out[b].length - 1];
          continue;
        }
        const tok = s.greedy
          ? argmaxRow(values, b * vocab, vocab)
          : sampleRow(values, s, drawUniform(s.seed, step * batch + b), b * vocab, vocab);
        out[b].push(tok);
        next[b] = tok;
        if (s.eos.has(tok)) done[b] = true;
      }
      if (done.every(Boolean) || step === p.maxNewTokens - 1) break;
      const len = width + step + 1;
      for (let b = 0; b < batch; b++) p.mask[b * total + len - 1] = 1;
      const pos = Int32Array.from(p.pads, (pad) => width - pad + step);
      logits = model.forwardStep({ data: next, shape: [batch, 1] }, {
        attentionMask: maskPrefix(p, len),
        positionIds: pos,
        cache,
      });
    }
  } finally {
    cache.dispose();
  }
  return out;
}

/** A decoder whose config carries its rotary settings (every Llama-family config does). */
type RopeModel = { config: { headDim: number; rope: RopeParameters } };

function hasRope(m: unknown): m is RopeModel {
  const c = (m as RopeModel).config;
  return Number.isInteger(c?.headDim) && typeof c?.rope === "object" && c.rope !== null;
}

/**
 * The ids of a window of steps (each [batch] f32 on the device) in step order, with one read: the
 * backend packs them by buffer copies (no kernel dispatch per step, as a concat would take).
 */
async function readIds(pending: Tensor[], batch: number): Promise<ArrayLike<number>> {
  if (pending.length === 1) return await pending[0].data();
  const device = pending[0].device;
  const packed = device.backend.pack(
    pending.map((t) => t.storage("generate")),
    pending.map((_, w) => w * batch),
    pending.length * batch,
    "f32",
  );
  const all = fromStorage(packed, [pending.length * batch], "f32", device);
  try {
    return await all.data();
  } finally {
    all.dispose();
  }
}

/**
 * The device loop: the prefill through the model's forward, then {@link decodeStep} per token over a
 * {@link StaticKVCache}, each token chosen on the device and fed to the next step there; the ids are
 * read back once per window of `readEvery` steps, where EOS is applied (tokens after a row's EOS in the
 * window are dropped: rows are independent, so those steps changed nothing else).
 */
async function generateOnDevice(
  model: IncrementalLM & Parameters<typeof decodeStep>[0] & RopeModel,
  p: Prepared,
  kernels: DecodeKernels,
): Promise<number[][]> {
  const { s, batch, width, out } = p;
  if (p.maxNewTokens === 0) return out;
  const choice: TokenChoice = s.greedy
    ? { greedy: true }
    : { greedy: false, seed: s.seed, temperature: s.temperature, topK: s.topK, topP: s.topP };
  const rope = new RopeTables(model.config.headDim, model.config.rope);
  const done = new Array<boolean>(batch).fill(false);
  const prefill = new KVCache(model.config.numHiddenLayers);
  let cache: StaticKVCache | null = null;
  let constants: DecodeConstants | null = null;
  let feed: Tensor | null = null;
  let pending: Tensor[] = [];
  try {
    const logits = model.forwardStep({ data: p.ids, shape: [batch, width] }, {
      attentionMask: maskPrefix(p, width),
      positionIds: p.positions,
      cache: prefill,
    });
    feed = chooseTokens(logits, choice, 0);
    logits.dispose();
    pending.push(feed);
    // Slots 0 .. width − 1 hold the prompt; step k's token goes to slot width + k − 1.
    cache = new StaticKVCache(prefill, width + p.maxNewTokens);
    prefill.dispose();
    // Row b's first real token sits in slot pads[b] at position 0: slot s is position s − pads[b].
    constants = new DecodeConstants(rope, cache.capacity, p.pads, feed.device);
    for (let step = 0; step < p.maxNewTokens; step++) {
      const last = step === p.maxNewTokens - 1;
      if (pending.length === s.readEvery || last) {
        const window = pending.length;
        const ids = await readIds(pending, batch);
        for (const t of pending) if (t !== feed) t.dispose();
        pending = [];
        for (let w = 0; w < window; w++) {
          for (let b = 0; b < batch; b++) {
            if (done[b]) continue;
            const tok = ids[w * batch + b];
            out[b].push(tok);
            if (s.eos.has(tok)) done[b] = true;
          }
        }
        if (last || done.every(Boolean)) break;
      }
      const logits = decodeStep(model, feed, cache, constants, width + step, kernels);
      const next = chooseTokens(logits, choice, (step + 1) * batch);
      logits.dispose();
      if (!pending.includes(feed)) feed.dispose();
      feed = next;
      pending.push(next);
    }
  } finally {
    for (const t of pending) t.dispose();
    if (feed !== null && !pending.includes(feed)) feed.dispose();
    prefill.dispose();
    cache?.dispose();
    constants?.dispose();
  }
  return out;
}
