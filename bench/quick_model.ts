/**
 * The model the benches build for `--quick` (CI) runs: SmolLM2-135M's layout (GQA 3:1, tied embeddings) at a
 * CI-sized width, as a transformers config.json object for `AutoModelForCausalLM.fromConfig`.
 * @module
 */

/** SmolLM2-135M's layout at CI size. */
export const QUICK_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 96,
  intermediate_size: 256,
  num_hidden_layers: 2,
  num_attention_heads: 3,
  num_key_value_heads: 1,
  vocab_size: 512,
  tie_word_embeddings: true,
  rope_theta: 100000.0,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  hidden_act: "silu",
};
