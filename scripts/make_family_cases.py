#!/usr/bin/env python3
"""Writes reference cases for the Qwen2, Qwen3 and Phi-3 model classes with Hugging Face transformers + PEFT.

Usage (torch, transformers 5.17 and peft 0.21 installed; runs on the CPU in float32, seconds):
  python3 scripts/make_family_cases.py OUT_DIR            # e.g. test/fixtures
  python3 scripts/make_family_cases.py OUT_DIR --only qwen3-gqa

For each case it creates OUT_DIR/<case>/ holding
  base/                 the tiny random model as transformers' save_pretrained wrote it, plus a
                        generation_config.json whose eos_token_id lists two ids (unlike config.json's)
  base-v4/config.json   the same config in the spelling transformers 4.x wrote (rope_theta + rope_scaling,
                        torch_dtype; for Qwen a sliding_window that use_sliding_window false switches off);
                        transformers 5 is checked to compute the same logits from it
  adapter/              the LoRA adapter as PEFT's save_pretrained wrote it
  golden.safetensors    input_ids, attention_mask (int64 [2, 12]); logits_base, logits_lora
                        [2, 12, vocab]; loss [1] (labels = input_ids, -100 where the mask is 0);
                        grad.<PEFT key> for every LoRA weight; adamw_losses [3] (loss before each of three
                        torch.optim.AdamW(lr=1e-2) steps over the adapter); logits_trained, logits_merged;
                        greedy_prompt (left-padded, int64 [2, 6]), greedy_prompt_mask, greedy_tokens
                        ([2, 6 + 6], no early stop) and greedy_tokens_eos (transformers' default stop at
                        generation_config.json's eos ids; finished rows padded with pad_token_id)
  meta.json             the case's settings and the library versions
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
from transformers import Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

SIZES = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = {
    # Qwen2.5-0.5B's layout: tied embeddings, biases on q/k/v only, GQA; right padding; PEFT's
    # "all-linear" targets (every Linear but the output head).
    "qwen2-tied": dict(
        arch="qwen2",
        config=dict(tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        lora=dict(r=4, lora_alpha=8, target_modules="all-linear"),
        padding="right",
    ),
    # Qwen3: per-head q/k norms, head_dim 16 unlike hidden / heads = 8, untied head; left padding.
    "qwen3-gqa": dict(
        arch="qwen3",
        config=dict(head_dim=16, tie_word_embeddings=False),
        lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]),
        padding="left",
    ),
    # Qwen3 with attention_bias (all four projections biased), tied head, no padding.
    "qwen3-bias-tied": dict(
        arch="qwen3",
        config=dict(head_dim=8, attention_bias=True, tie_word_embeddings=True),
        lora=dict(r=4, lora_alpha=4, target_modules=ALL_PROJ),
        padding=None,
    ),
    # Phi-3: fused qkv_proj and gate_up_proj, GQA, untied head; LoRA on both fused Linears as PEFT
    # targets them by name; left padding.
    "phi3-gqa": dict(
        arch="phi3",
        config=dict(tie_word_embeddings=False, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        lora=dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
        padding="left",
    ),
}

CLASSES = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "phi3": (Phi3Config, Phi3ForCausalLM),
}

BATCH, SEQ, PROMPT, NEW = 2, 12, 6, 6


def attention_mask(padding):
    mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    if padding == "right":
        mask[1, SEQ - 4:] = 0
    elif padding == "left":
        mask[1, :4] = 0
    return mask


def build_model(case):
    cfg = dict(SIZES, **case["config"])
    config_cls, cls = CLASSES[case["arch"]]
    config = config_cls(**cfg)
    config._attn_implementation = "eager"
    model = cls(config).float().eval()
    with torch.no_grad():
        # Default init is N(0, 0.02): too small to exercise anything; widen it and shift the norms.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model, cls


def v4_config(config_json, arch):
    """The config as transformers 4.x wrote it: rope_theta + rope_scaling, torch_dtype, and for Qwen the
    sliding-window fields Qwen2.5's files carry with use_sliding_window false."""
    old = {k: v for k, v in config_json.items() if k not in ("rope_parameters", "dtype", "layer_types")}
    rope = config_json["rope_parameters"]
    old["rope_theta"] = rope["rope_theta"]
    old["rope_scaling"] = None
    old["torch_dtype"] = config_json.get("dtype", "float32")
    old["transformers_version"] = "4.57.6"
    if arch == "phi3":
        old["sliding_window"] = None
        return old
    old["use_sliding_window"] = False
    old["sliding_window"] = 4096
    old["max_window_layers"] = 1
    old["transformers_version"] = "4.57.6"
    return old


def make_case(name, case, out_dir, seed):
    torch.manual_seed(seed)
    d = os.path.join(out_dir, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model, cls = build_model(case)
    base = os.path.join(d, "base")
    model.save_pretrained(base, safe_serialization=True)

    vocab = SIZES["vocab_size"]
    ids = torch.randint(3, vocab, (BATCH, SEQ), dtype=torch.int64)
    mask = attention_mask(case["padding"])
    ids = torch.where(mask == 1, ids, torch.full_like(ids, SIZES["pad_token_id"]))
    labels = torch.where(mask == 1, ids, torch.full_like(ids, -100))
    prompt = torch.randint(3, vocab, (BATCH, PROMPT), dtype=torch.int64)
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[1, :2] = 0  # transformers' generate expects left padding
    prompt = torch.where(prompt_mask == 1, prompt, torch.full_like(prompt, SIZES["pad_token_id"]))

    # Reload what was written, in float32, so the references use exactly the stored values.
    model = cls.from_pretrained(base, dtype=torch.float32, attn_implementation="eager").eval()
    out = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        out["logits_base"] = model(input_ids=ids, attention_mask=mask).logits

    # The transformers 4.x spelling of the same config loads to the same numbers.
    with open(os.path.join(base, "config.json")) as f:
        config_json = json.load(f)
    os.makedirs(os.path.join(d, "base-v4"))
    with open(os.path.join(d, "base-v4", "config.json"), "w") as f:
        json.dump(v4_config(config_json, case["arch"]), f, indent=2)
    shutil.copy(os.path.join(base, "model.safetensors"), os.path.join(d, "base-v4", "model.safetensors"))
    old = cls.from_pretrained(os.path.join(d, "base-v4"), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        assert torch.equal(old(input_ids=ids, attention_mask=mask).logits, out["logits_base"])
    os.remove(os.path.join(d, "base-v4", "model.safetensors"))  # tests pair it with base/'s weights

    lora = LoraConfig(init_lora_weights=False, lora_dropout=0.0, **case["lora"])
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

    gen_kwargs = dict(attention_mask=prompt_mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    model.generation_config.eos_token_id = None  # first: all NEW tokens, no early stop
    with torch.no_grad():
        gen = pm.generate(input_ids=prompt, **gen_kwargs)
    assert gen.shape == (BATCH, PROMPT + NEW), gen.shape
    out["greedy_prompt"], out["greedy_prompt_mask"], out["greedy_tokens"] = prompt, prompt_mask, gen

    # generation_config.json names two EOS ids that the greedy rows produce (row 0 early, row 1 later),
    # while config.json keeps eos_token_id 2: generate's default stop must come from the former.
    eos = [int(gen[0, PROMPT + 1]), int(gen[1, PROMPT + 3])]
    generation = {"bos_token_id": 1, "eos_token_id": eos, "pad_token_id": 0,
                  "transformers_version": transformers.__version__}
    with open(os.path.join(base, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
    model.generation_config = transformers.GenerationConfig.from_pretrained(base)
    with torch.no_grad():
        gen_eos = pm.generate(input_ids=prompt, **gen_kwargs)
    gen_eos = torch.nn.functional.pad(gen_eos, (0, PROMPT + NEW - gen_eos.shape[1]), value=0)
    out["greedy_tokens_eos"] = gen_eos

    merged = pm.merge_and_unload()
    with torch.no_grad():
        out["logits_merged"] = merged(input_ids=ids, attention_mask=mask).logits

    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "golden.safetensors"))
    meta = {
        "case": name,
        "seed": seed,
        "arch": case["arch"],
        "config": case["config"],
        "lora_config": case["lora"],
        "padding": case["padding"],
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
    p.add_argument("--only", choices=sorted(CASES), action="append")
    a = p.parse_args()
    torch.set_num_threads(1)  # one thread: the same reductions every run
    for i, (name, case) in enumerate(CASES.items()):
        if a.only and name not in a.only:
            continue
        make_case(name, case, a.out_dir, seed=2000 + i)


if __name__ == "__main__":
    main()
