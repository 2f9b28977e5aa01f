/**
 * The model classes beside `LlamaForCausalLM`, named as transformers names them. They share Llama's
 * decoder code (as transformers' own Qwen2/Qwen3 modeling files are generated from Llama's): what sets
 * a family apart is switched on by its parsed config (see `parseLlamaConfig`): Qwen2's biases on q, k and
 * v only, Qwen3's per-head q/k RMSNorm and explicit head_dim, Phi-3's fused qkv_proj and gate_up_proj
 * (`fusedProjections`); Gemma 3 has layers of its own (src/models/gemma3.ts, re-exported here). Each class
 * builds only its own family's
 * configs, so a Qwen checkpoint cannot load as a Llama with the wrong projections.
 * @module
 */
import type { ModelFamily } from "./config.ts";
import { LlamaForCausalLM } from "./llama.ts";

export { Gemma3ForCausalLM } from "./gemma3.ts";

/** transformers' `MistralForCausalLM` without a sliding window: exactly Llama's computation. */
export class MistralForCausalLM extends LlamaForCausalLM {
  /** Mistral configs parse into the "llama" family. */
  static override readonly families: readonly ModelFamily[] = ["llama"];
}

/** transformers' `Qwen2ForCausalLM` (Qwen2 and Qwen2.5): q, k and v projections with biases, o without. */
export class Qwen2ForCausalLM extends LlamaForCausalLM {
  /** Builds `model_type: "qwen2"` configs. */
  static override readonly families: readonly ModelFamily[] = ["qwen2"];
}

/**
 * transformers' `Qwen3ForCausalLM`: `q_norm` / `k_norm` RMSNorms over each head before the rotary
 * embedding, `head_dim` 128 unless the config gives it, biases per `attention_bias`.
 */
export class Qwen3ForCausalLM extends LlamaForCausalLM {
  /** Builds `model_type: "qwen3"` configs. */
  static override readonly families: readonly ModelFamily[] = ["qwen3"];
}

/**
 * transformers' `Phi3ForCausalLM` (Phi-3 and Phi-3.5 mini): queries, keys and values from one fused
 * `qkv_proj`, the MLP's gate and up halves from one `gate_up_proj`, no biases. Both fused Linears are
 * ordinary `Linear`s, so LoRA targets them by those names as PEFT does (one A/B pair over the whole
 * fused output). Sliding windows, LongRoPE scaling, partial rotary embeddings and residual/embedding
 * dropout are ConfigErrors naming the field.
 */
export class Phi3ForCausalLM extends LlamaForCausalLM {
  /** Builds `model_type: "phi3"` configs. */
  static override readonly families: readonly ModelFamily[] = ["phi3"];
}
