/**
 * The config.json fields of transformers' `Gemma3TextConfig` (model_type "gemma3_text") that the other
 * families do not have: which layers use a sliding window (`layer_types`, or the 4.x
 * `sliding_window_pattern`), the window, `query_pre_attn_scalar`, the activation, soft-capping and
 * bidirectional attention, and the rotary settings of each layer type (`rope_parameters` keyed by layer
 * type in transformers 5; `rope_theta`, `rope_scaling` and `rope_local_base_freq` in 4.x).
 *
 * This file reads and checks those fields only; src/models/config.ts calls it for Gemma 3 configs and
 * parses the rope objects it hands back with the shared rope parser (so this file imports nothing of
 * config.ts, which imports it).
 * @module
 */
import { ConfigError } from "../core/errors.ts";

type Json = Record<string, unknown>;

/** The attention kinds of `layer_types` that Gemma 3 has. */
export type Gemma3LayerType = "sliding_attention" | "full_attention";

/** Gemma3TextConfig's defaults where a field is absent (its class attributes in transformers 5.17). */
export const GEMMA3_DEFAULTS = {
  headDim: 256,
  queryPreAttnScalar: 256,
  slidingWindow: 4096,
  slidingWindowPattern: 6,
  tieWordEmbeddings: true,
  globalRopeTheta: 1_000_000,
  localRopeTheta: 10_000,
} as const;

/** What {@link readGemma3Fields} found, the rope settings still as JSON for the shared rope parser. */
export interface Gemma3Fields {
  /** One entry per decoder layer. */
  layerTypes: Gemma3LayerType[];
  /** Keys a sliding layer's query sees, itself included (transformers: kv_idx > q_idx − window). */
  slidingWindow: number;
  /** The attention scale is this to the power −½ (not head_dim). */
  queryPreAttnScalar: number;
  /** The full-attention layers' rope settings as a `{ rope_type, rope_theta, ... }` object. */
  fullRope: Json;
  /** The sliding layers' rope settings as a `{ rope_type, rope_theta, ... }` object. */
  slidingRope: Json;
}

function field(obj: Json, key: string): unknown {
  return Object.hasOwn(obj, key) ? obj[key] : undefined;
}

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/** `layer_types` as written, or the 4.x pattern: every `pattern`-th layer full, the others sliding. */
function layerTypes(obj: Json, layers: number): Gemma3LayerType[] {
  const given = field(obj, "layer_types");
  if (given === undefined || given === null) {
    const pattern = field(obj, "sliding_window_pattern") ?? GEMMA3_DEFAULTS.slidingWindowPattern;
    if (!Number.isInteger(pattern) || (pattern as number) < 1) {
      throw new ConfigError(
        `config.json: sliding_window_pattern must be a positive integer, got ${JSON.stringify(pattern)}`,
      );
    }
    return Array.from(
      { length: layers },
      (_, i) => (i + 1) % (pattern as number) === 0 ? "full_attention" : "sliding_attention",
    );
  }
  if (!Array.isArray(given) || given.length !== layers) {
    throw new ConfigError(
      `config.json: layer_types must list one type for each of the ${layers} layers, got ${
        JSON.stringify(given)
      }`,
    );
  }
  const bad = given.findIndex((t) => t !== "sliding_attention" && t !== "full_attention");
  if (bad >= 0) {
    throw new ConfigError(
      `config.json: layer_types[${bad}] ${JSON.stringify(given[bad])} is not implemented for Gemma 3 ` +
        `(only "sliding_attention" and "full_attention")`,
    );
  }
  return [...given] as Gemma3LayerType[];
}

/**
 * Each layer type's rope object, as Gemma3TextConfig fills it: transformers 5's `rope_parameters` keyed
 * by layer type (a missing or null entry is the default rope with that type's default base); 4.x's
 * `rope_theta` + `rope_scaling` for the full layers and `rope_local_base_freq` for the sliding ones.
 */
function ropeSources(obj: Json): { fullRope: Json; slidingRope: Json } {
  const params = field(obj, "rope_parameters");
  const scaling = field(obj, "rope_scaling");
  const theta = field(obj, "rope_theta");
  const local = field(obj, "rope_local_base_freq");
  if (params !== undefined && params !== null) {
    if (!isObject(params)) {
      throw new ConfigError(`config.json: rope_parameters must be an object, got ${JSON.stringify(params)}`);
    }
    if (scaling !== undefined && scaling !== null) {
      throw new ConfigError(`config.json: both rope_parameters and rope_scaling are set; give one of them`);
    }
    const keys = Object.keys(params);
    if (keys.length > 0 && !keys.includes("full_attention") && !keys.includes("sliding_attention")) {
      // transformers would drop such a flat object and use the default bases: refuse instead of guessing.
      throw new ConfigError(
        `config.json: Gemma 3's rope_parameters must be keyed by layer type ("full_attention", ` +
          `"sliding_attention"), got keys ${JSON.stringify(keys)}`,
      );
    }
    const entry = (key: string, base: unknown): Json => {
      const v = params[key];
      if (v === undefined || v === null) return { rope_type: "default", rope_theta: base };
      if (!isObject(v)) {
        throw new ConfigError(
          `config.json: rope_parameters.${key} must be an object or null, got ${JSON.stringify(v)}`,
        );
      }
      return { ...v, rope_theta: field(v, "rope_theta") ?? base };
    };
    return {
      fullRope: entry("full_attention", theta ?? GEMMA3_DEFAULTS.globalRopeTheta),
      slidingRope: entry("sliding_attention", local ?? GEMMA3_DEFAULTS.localRopeTheta),
    };
  }
  if (scaling !== undefined && scaling !== null && !isObject(scaling)) {
    throw new ConfigError(
      `config.json: rope_scaling must be an object or null, got ${JSON.stringify(scaling)}`,
    );
  }
  if (isObject(scaling) && field(scaling, "rope_type") === undefined) {
    const type = field(scaling, "type");
    if (type !== undefined && type !== "default") {
      // Gemma3TextConfig merges rope_scaling into { rope_type: "default" }, so transformers 5.17 computes
      // the default rope from this: refuse rather than pick either reading.
      throw new ConfigError(
        `config.json: rope_scaling.type ${JSON.stringify(type)} without rope_type is ambiguous for Gemma 3 ` +
          `(transformers 5 ignores it); write rope_type`,
      );
    }
  }
  return {
    // rope_scaling updates the full layers' `{ rope_type: "default" }`, as Gemma3TextConfig merges it.
    fullRope: {
      rope_type: "default",
      ...(isObject(scaling) ? scaling : {}),
      rope_theta: (isObject(scaling) ? field(scaling, "rope_theta") : undefined) ?? theta ??
        GEMMA3_DEFAULTS.globalRopeTheta,
    },
    slidingRope: { rope_type: "default", rope_theta: local ?? GEMMA3_DEFAULTS.localRopeTheta },
  };
}

/**
 * Reads and checks Gemma 3's own config fields. Soft-capping (`attn_logit_softcapping`,
 * `final_logit_softcapping`), `use_bidirectional_attention` and any `hidden_activation` but
 * "gelu_pytorch_tanh" are ConfigErrors naming the field, as is a sliding layer without a window.
 * @throws {ConfigError} naming the field that is malformed or not implemented
 */
export function readGemma3Fields(obj: Json, layers: number): Gemma3Fields {
  const act = field(obj, "hidden_activation") ?? "gelu_pytorch_tanh";
  if (act !== "gelu_pytorch_tanh") {
    throw new ConfigError(
      `config.json: hidden_activation ${JSON.stringify(act)} is not implemented (only "gelu_pytorch_tanh")`,
    );
  }
  for (const key of ["attn_logit_softcapping", "final_logit_softcapping"]) {
    const v = field(obj, key);
    if (v !== undefined && v !== null) {
      throw new ConfigError(`config.json: ${key} ${JSON.stringify(v)} is not implemented (must be null)`);
    }
  }
  const bidirectional = field(obj, "use_bidirectional_attention");
  if (bidirectional !== undefined && bidirectional !== null && bidirectional !== false) {
    throw new ConfigError(
      `config.json: use_bidirectional_attention ${JSON.stringify(bidirectional)} is not implemented ` +
        `(only false: causal attention)`,
    );
  }
  const types = layerTypes(obj, layers);
  const windowField = field(obj, "sliding_window");
  const window = windowField === undefined ? GEMMA3_DEFAULTS.slidingWindow : windowField;
  if (window === null) {
    if (types.includes("sliding_attention")) {
      throw new ConfigError(
        `config.json: sliding_window is null but layer ${types.indexOf("sliding_attention")} is ` +
          `"sliding_attention"`,
      );
    }
  } else if (!Number.isInteger(window) || (window as number) < 1) {
    throw new ConfigError(
      `config.json: sliding_window must be a positive integer, got ${JSON.stringify(window)}`,
    );
  }
  const scalar = field(obj, "query_pre_attn_scalar") ?? GEMMA3_DEFAULTS.queryPreAttnScalar;
  if (typeof scalar !== "number" || !Number.isFinite(scalar) || scalar <= 0) {
    throw new ConfigError(
      `config.json: query_pre_attn_scalar must be a positive number, got ${JSON.stringify(scalar)}`,
    );
  }
  return {
    layerTypes: types,
    // A config of full layers only may have no window; 0 there means "no limit" (it is never used).
    slidingWindow: window === null ? 0 : window as number,
    queryPreAttnScalar: scalar,
    ...ropeSources(obj),
  };
}
