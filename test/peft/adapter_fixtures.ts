/** Module trees for the adapter tests: one named and shaped like the golden tiny Llama, and helpers. */
import { Embedding, isLoraLinear, Linear, Module, RMSNorm } from "../../mod.ts";
import { writeSafetensors } from "../../src/io/safetensors.ts";
import type { Tensor } from "../../mod.ts";
import { fixture } from "../helpers.ts";

/** The golden base model's config.json (hidden 64, intermediate 176, 2 layers, 4 heads, 2 kv heads). */
export const llamaConfig = JSON.parse(new TextDecoder().decode(fixture("llama-tiny-lora/base/config.json")));

/** Stand-in for transformers' LlamaForCausalLM: its module names and shapes, no forward. */
export class TinyLlamaForCausalLM extends Module {
  declare model: Module;
  declare lm_head: Linear;
  config = { architectures: ["LlamaForCausalLM"] };
}

/** A plain Module whose children are `parts`, registered in the given order. */
export function node(parts: Record<string, Module | Module[]>): Module {
  return Object.assign(new Module(), parts);
}

/** A module tree named like the golden Llama (`model.layers.N.self_attn.q_proj`, ..., `lm_head`). */
export function tinyLlamaTree(seed = 1): TinyLlamaForCausalLM {
  const c = llamaConfig;
  const hidden = c.hidden_size, inter = c.intermediate_size, headDim = c.head_dim;
  const lin = (i: number, o: number, s: number) => new Linear(i, o, { bias: false, seed: seed * 1000 + s });
  const layers = Array.from({ length: c.num_hidden_layers }, (_, i) =>
    node({
      self_attn: node({
        q_proj: lin(hidden, c.num_attention_heads * headDim, 10 * i + 1),
        k_proj: lin(hidden, c.num_key_value_heads * headDim, 10 * i + 2),
        v_proj: lin(hidden, c.num_key_value_heads * headDim, 10 * i + 3),
        o_proj: lin(c.num_attention_heads * headDim, hidden, 10 * i + 4),
      }),
      mlp: node({
        gate_proj: lin(hidden, inter, 10 * i + 5),
        up_proj: lin(hidden, inter, 10 * i + 6),
        down_proj: lin(inter, hidden, 10 * i + 7),
      }),
      input_layernorm: new RMSNorm(hidden),
      post_attention_layernorm: new RMSNorm(hidden),
    }));
  const root = new TinyLlamaForCausalLM();
  root.model = node({
    embed_tokens: new Embedding(c.vocab_size, hidden, { seed }),
    layers,
    norm: new RMSNorm(hidden),
  });
  root.lm_head = lin(hidden, c.vocab_size, 99);
  return root;
}

/** The module at dotted path `name`. */
export function moduleAt(root: Module, name: string): Module {
  const found = root.namedModules().find(([n]) => n === name);
  if (!found) throw new Error(`moduleAt: no module ${name}`);
  return found[1];
}

/** Values of a CPU tensor as a plain array. */
export function hostValues(t: Tensor): number[] {
  return Array.from(t.dataSync());
}

/** A copy of `bytes` as a fresh Uint8Array (the files object must not alias fixture buffers we mutate). */
export function copyBytes(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes);
}

/** Deterministic pseudo-random values in [-1, 1). */
export function seededValues(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

/**
 * PEFT-style adapter files for `model`: `config` (PEFT's snake_case fields, peft_type added) and, for each
 * module named in `ranks`, random lora_A [r, in] and lora_B [out, r] under PEFT's keys.
 */
export function peftFiles(
  model: Module,
  config: Record<string, unknown>,
  ranks: Record<string, number>,
  seed = 3,
): { "adapter_config.json": string; "adapter_model.safetensors": Uint8Array } {
  const entries: Record<string, { dtype: string; shape: number[]; data: Float32Array }> = {};
  let k = seed;
  for (const [name, r] of Object.entries(ranks)) {
    const m = moduleAt(model, name) as Linear;
    entries[`base_model.model.${name}.lora_A.weight`] = {
      dtype: "F32",
      shape: [r, m.inFeatures],
      data: seededValues(r * m.inFeatures, k++),
    };
    entries[`base_model.model.${name}.lora_B.weight`] = {
      dtype: "F32",
      shape: [m.outFeatures, r],
      data: seededValues(m.outFeatures * r, k++),
    };
  }
  return {
    "adapter_config.json": JSON.stringify({ peft_type: "LORA", ...config }),
    "adapter_model.safetensors": writeSafetensors(entries, { format: "pt" }),
  };
}

/** Names of the LoRA layers of `model` with their rank and scale. */
export function adapterSummary(model: Module): Record<string, { r: number; scale: number }> {
  const out: Record<string, { r: number; scale: number }> = {};
  for (const [name, m] of model.namedModules()) {
    if (isLoraLinear(m)) out[name] = { r: m.dim, scale: m.scale };
  }
  return out;
}

/** The golden tree's 14 adapted projection names, layer by layer. */
export const PROJECTIONS = [0, 1].flatMap((i) =>
  ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    .concat(["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
    .map((p) => `model.layers.${i}.${p}`)
);
