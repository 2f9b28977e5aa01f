#!/usr/bin/env python3
"""Writes the Gemma 3 (text model) reference case with Hugging Face transformers + PEFT.

Usage (torch, transformers 5.17 and peft 0.21 installed; runs on the CPU in float32, seconds):
  python3 scripts/make_gemma3_cases.py OUT_DIR            # e.g. test/fixtures

It creates OUT_DIR/gemma3-sliding/ holding
  base/                 a tiny random Gemma3ForCausalLM as transformers' save_pretrained wrote it: three
                        layers (sliding, full, sliding) with a window of 5 positions, head_dim 12 unlike
                        hidden / heads = 8, query_pre_attn_scalar 10 unlike head_dim, GQA (2 heads, 1 key/value
                        head), the sliding layers' rope base 10 000 and the full layer's 1e6 with linear
                        scaling 4, the output head tied to the embeddings; plus a generation_config.json whose
                        eos_token_id lists two ids (unlike config.json's)
  base-v4/config.json   the same config in the spelling transformers 4.x wrote (rope_theta, rope_scaling and
                        rope_local_base_freq; sliding_window_pattern instead of layer_types; torch_dtype);
                        transformers 5 is checked to compute the same logits from it
  adapter/              a PEFT LoRA adapter (r 4, alpha 8, init_lora_weights=False so B is not zero) on
                        q, k, v, o, gate, up and down projections
  golden.safetensors    input_ids, attention_mask (int64 [3, 12]: row 0 unpadded, row 1 left-padded by 4,
                        row 2 right-padded by 3; 12 positions > the window of 5); logits_base, logits_lora
                        [3, 12, vocab]; loss [1] (labels = input_ids, -100 where the mask is 0);
                        grad.<PEFT key> for every LoRA weight; adamw_losses [3] (loss before each of three
                        torch.optim.AdamW(lr=1e-2) steps over the adapter); logits_trained, logits_merged;
                        greedy_prompt (left-padded, int64 [2, 6]), greedy_prompt_mask, greedy_tokens
                        ([2, 6 + 6], no early stop: 12 positions, so the cached decoding passes the window)
                        and greedy_tokens_eos (the default stop at generation_config.json's eos ids;
                        finished rows padded with pad_token_id)
  meta.json             the case's settings and the library versions
Attention runs transformers' eager implementation (the reference our eager and fused paths are held to).
"""
import argparse
import json
import os
import shutil

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

NAME = "gemma3-sliding"
CONFIG = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=12,
    query_pre_attn_scalar=10,
    sliding_window=5,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
    },
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
)
LORA = dict(
    r=4,
    lora_alpha=8,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
BATCH, SEQ, PROMPT, NEW = 3, 12, 6, 6
PAD = CONFIG["pad_token_id"]


def attention_mask():
    mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    mask[1, :4] = 0  # left padding: the first window of row 1 holds only padding
    mask[2, SEQ - 3:] = 0  # right padding
    return mask


def build_model():
    config = Gemma3TextConfig(**CONFIG)
    config._attn_implementation = "eager"
    model = Gemma3ForCausalLM(config).float().eval()
    with torch.no_grad():
        # Default init is N(0, 0.02) and zero norms: too small to exercise anything. Norm weights w enter
        # as (1 + w), so they are drawn around 0.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model


def v4_config(config_json):
    """The config as transformers 4.x wrote Gemma 3: rope_theta + rope_scaling for the full layers,
    rope_local_base_freq for the sliding ones, sliding_window_pattern instead of layer_types."""
    drop = ("rope_parameters", "dtype", "layer_types", "_sliding_window_pattern")
    old = {k: v for k, v in config_json.items() if k not in drop}
    full = config_json["rope_parameters"]["full_attention"]
    old["rope_theta"] = full["rope_theta"]
    old["rope_scaling"] = {"rope_type": full["rope_type"], "factor": full["factor"]}
    old["rope_local_base_freq"] = config_json["rope_parameters"]["sliding_attention"]["rope_theta"]
    old["sliding_window_pattern"] = 2  # layers 0 and 2 sliding, layer 1 full, as layer_types says
    old["torch_dtype"] = config_json.get("dtype", "float32")
    old["transformers_version"] = "4.57.6"
    return old


def make_case(out_dir, seed):
    torch.manual_seed(seed)
    d = os.path.join(out_dir, NAME)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model = build_model()
    base = os.path.join(d, "base")
    model.save_pretrained(base, safe_serialization=True)

    vocab = CONFIG["vocab_size"]
    ids = torch.randint(3, vocab, (BATCH, SEQ), dtype=torch.int64)
    mask = attention_mask()
    ids = torch.where(mask == 1, ids, torch.full_like(ids, PAD))
    labels = torch.where(mask == 1, ids, torch.full_like(ids, -100))
    prompt = torch.randint(3, vocab, (2, PROMPT), dtype=torch.int64)
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[1, :2] = 0  # transformers' generate expects left padding
    prompt = torch.where(prompt_mask == 1, prompt, torch.full_like(prompt, PAD))

    # Reload what was written, in float32, so the references use exactly the stored values.
    model = Gemma3ForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager").eval()
    out = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        out["logits_base"] = model(input_ids=ids, attention_mask=mask).logits
        # The window matters: the same model with one window wider computes other logits.
        wide = Gemma3ForCausalLM.from_pretrained(
            base, dtype=torch.float32, attn_implementation="eager", sliding_window=CONFIG["sliding_window"] + 1)
        assert not torch.allclose(wide(input_ids=ids, attention_mask=mask).logits, out["logits_base"])

    with open(os.path.join(base, "config.json")) as f:
        config_json = json.load(f)
    os.makedirs(os.path.join(d, "base-v4"))
    with open(os.path.join(d, "base-v4", "config.json"), "w") as f:
        json.dump(v4_config(config_json), f, indent=2)
    shutil.copy(os.path.join(base, "model.safetensors"), os.path.join(d, "base-v4", "model.safetensors"))
    old = Gemma3ForCausalLM.from_pretrained(
        os.path.join(d, "base-v4"), dtype=torch.float32, attn_implementation="eager")
    assert old.config.layer_types == CONFIG["layer_types"], old.config.layer_types
    with torch.no_grad():
        assert torch.equal(old(input_ids=ids, attention_mask=mask).logits, out["logits_base"])
    os.remove(os.path.join(d, "base-v4", "model.safetensors"))  # tests pair it with base/'s weights

    lora = LoraConfig(init_lora_weights=False, lora_dropout=0.0, **LORA)
    pm = get_peft_model(model, lora)
    pm.eval()
    res = pm(input_ids=ids, attention_mask=mask, labels=labels)
    out["logits_lora"] = res.logits.detach()
    out["loss"] = res.loss.detach().reshape(1)
    res.loss.backward()
    params = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    for n, p in params.items():
        out["grad." + n.replace(".default", "")] = p.grad.detach().clone()
    pm.save_pretrained(os.path.join(d, "adapter"))

    opt = torch.optim.AdamW(list(params.values()), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt.zero_grad()
    losses = []
    for _ in range(3):
        r = pm(input_ids=ids, attention_mask=mask, labels=labels)
        losses.append(r.loss.item())
        r.loss.backward()
        opt.step()
        opt.zero_grad()
    out["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    with torch.no_grad():
        out["logits_trained"] = pm(input_ids=ids, attention_mask=mask).logits

    gen_kwargs = dict(attention_mask=prompt_mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    model.generation_config.eos_token_id = None  # first: all NEW tokens, no early stop
    with torch.no_grad():
        gen = pm.generate(input_ids=prompt, **gen_kwargs)
    assert gen.shape == (2, PROMPT + NEW), gen.shape
    out["greedy_prompt"], out["greedy_prompt_mask"], out["greedy_tokens"] = prompt, prompt_mask, gen

    # generation_config.json names two EOS ids that the greedy rows produce (row 0 early, row 1 later),
    # while config.json keeps eos_token_id 1: generate's default stop must come from the former.
    eos = [int(gen[0, PROMPT + 1]), int(gen[1, PROMPT + 3])]
    generation = {"bos_token_id": 2, "eos_token_id": eos, "pad_token_id": PAD,
                  "transformers_version": transformers.__version__}
    with open(os.path.join(base, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
    model.generation_config = transformers.GenerationConfig.from_pretrained(base)
    with torch.no_grad():
        gen_eos = pm.generate(input_ids=prompt, **gen_kwargs)
    gen_eos = torch.nn.functional.pad(gen_eos, (0, PROMPT + NEW - gen_eos.shape[1]), value=PAD)
    out["greedy_tokens_eos"] = gen_eos

    merged = pm.merge_and_unload()
    with torch.no_grad():
        out["logits_merged"] = merged(input_ids=ids, attention_mask=mask).logits

    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "golden.safetensors"))
    meta = {
        "case": NAME,
        "seed": seed,
        "config": CONFIG,
        "lora_config": LORA,
        "padding": {"row 1": "left, 4", "row 2": "right, 3"},
        "generation_eos": eos,
        "batch": BATCH,
        "seq": SEQ,
        "attn_implementation": "eager",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    size = sum(os.path.getsize(os.path.join(r, x)) for r, _, fs in os.walk(d) for x in fs)
    print(f"{d}: {size / 1024:.0f} KB, loss {out['loss'].item():.6f}, adamw {losses}, eos {eos}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    a = p.parse_args()
    torch.set_num_threads(1)  # one thread: the same reductions every run
    make_case(a.out_dir, seed=3000)


if __name__ == "__main__":
    main()
