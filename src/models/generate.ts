/**
 * Autoregressive decoding: a key/value cache so each new token costs one position of compute, and
 * token choice by greedy argmax or seeded sampling (temperature, then top-k, then top-p, in the order
 * transformers applies its logits warpers).
 * @module
 */
import { concat, keep, type Tensor } from "../tensor/mod.ts";
import { nextSeed, Rng } from "../core/random.ts";
import { ConfigError, ShapeError } from "../core/errors.ts";
import { checkOptionalBoolean, checkOptionKeys } from "../core/options.ts";

/** Names of {@link GenerateOptions}. */
const GENERATE_OPTION_KEYS = [
  "maxNewTokens",
  "greedy",
  "temperature",
  "topK",
  "topP",
  "seed",
  "eosTokenId",
] as const;

/** Options of `generate`. */
export interface GenerateOptions {
  /** How many tokens to add to each row (fewer where a row meets `eosTokenId`). */
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

function checkOptions(opts: GenerateOptions, vocab: number): Sampler & { eos: Set<number> } {
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
  return { greedy, temperature, topK, topP, eos: new Set(eosList) };
}

/** Index of the largest value, the first one on ties (torch.argmax's rule). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * Draws a token from one row of logits after temperature, top-k and top-p filtering (transformers'
 * warper semantics: top-k keeps ties with the k-th value; top-p drops the least likely tokens whose
 * cumulative probability stays within 1 − p, always keeping the most likely one).
 */
export function sampleToken(row: ArrayLike<number>, s: Sampler, rng: Rng): number {
  const n = row.length;
  const z = Float64Array.from(row, (v) => v / s.temperature);
  if (s.topK > 0 && s.topK < n) {
    const kth = Float64Array.from(z).sort()[n - s.topK];
    for (let i = 0; i < n; i++) if (z[i] < kth) z[i] = -Infinity;
  }
  const max = Math.max(...z);
  const p = z.map((v) => Math.exp(v - max));
  const total = p.reduce((a, b) => a + b, 0);
  for (let i = 0; i < n; i++) p[i] /= total;
  if (s.topP < 1) {
    const order = [...p.keys()].sort((a, b) => p[a] - p[b] || b - a); // ascending, like transformers
    let cum = 0;
    for (let j = 0; j < order.length - 1; j++) {
      cum += p[order[j]];
      if (cum > 1 - s.topP) break;
      p[order[j]] = 0;
    }
    const kept = p.reduce((a, b) => a + b, 0);
    for (let i = 0; i < n; i++) p[i] /= kept;
  }
  const u = rng.uniform();
  let acc = 0;
  let last = 0;
  for (let i = 0; i < n; i++) {
    if (p[i] === 0) continue;
    acc += p[i];
    last = i;
    if (u < acc) return i;
  }
  return last; // u fell in the rounding gap above the cumulative sum
}

/**
 * Greedy or sampled decoding with a KV cache. Rows of different lengths are left-padded (masked, with
 * positions counted over real tokens only, as transformers' generate does). Returns each row's prompt
 * followed by its new tokens; a row stops after an `eosTokenId` token, the batch once all rows stopped.
 */
export async function generateTokens(
  model: IncrementalLM,
  promptIds: number[][],
  opts: GenerateOptions,
): Promise<number[][]> {
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
  const out = promptIds.map((r) => [...r]);
  if (opts.maxNewTokens === 0) return out;
  const batch = promptIds.length;
  const width = Math.max(...promptIds.map((r) => r.length));
  const total = width + opts.maxNewTokens;
  // The mask grows by one column per step; keep it as rows of the final width and hand out prefixes.
  const mask = new Int32Array(batch * total);
  const ids = new Int32Array(batch * width);
  const positions = new Int32Array(batch * width);
  const nextPos = new Array<number>(batch);
  promptIds.forEach((row, b) => {
    const pad = width - row.length;
    for (let j = 0; j < width; j++) {
      ids[b * width + j] = j < pad ? row[0] : row[j - pad];
      mask[b * total + j] = j < pad ? 0 : 1;
      positions[b * width + j] = j < pad ? 1 : j - pad; // transformers fills padded positions with 1
    }
    nextPos[b] = row.length;
  });
  const maskPrefix = (len: number) => {
    const m = new Int32Array(batch * len);
    for (let b = 0; b < batch; b++) m.set(mask.subarray(b * total, b * total + len), b * len);
    return m;
  };
  const rng = new Rng(opts.seed ?? nextSeed());
  const done = new Array<boolean>(batch).fill(false);
  const cache = new KVCache(model.config.numHiddenLayers);
  let logits = model.forwardStep({ data: ids, shape: [batch, width] }, {
    attentionMask: maskPrefix(width),
    positionIds: positions,
    cache,
  });
  try {
    for (let step = 0; step < opts.maxNewTokens; step++) {
      const values = await logits.data();
      logits.dispose();
      const next = new Int32Array(batch);
      for (let b = 0; b < batch; b++) {
        if (done[b]) {
          next[b] = out[b][out[b].length - 1];
          continue;
        }
        const row = values.subarray(b * vocab, (b + 1) * vocab);
        const tok = s.greedy ? argmax(row) : sampleToken(row, s, rng);
        out[b].push(tok);
        next[b] = tok;
        if (s.eos.has(tok)) done[b] = true;
      }
      if (done.every(Boolean) || step === opts.maxNewTokens - 1) break;
      const len = width + step + 1;
      for (let b = 0; b < batch; b++) mask[b * total + len - 1] = 1;
      const pos = Int32Array.from(nextPos, (p) => p + step);
      logits = model.forwardStep({ data: next, shape: [batch, 1] }, {
        attentionMask: maskPrefix(len),
        positionIds: pos,
        cache,
      });
    }
  } finally {
    cache.dispose();
  }
  return out;
}
