#!/usr/bin/env python3
"""Writes extra reference cases for the Llama model tests with Hugging Face transformers + PEFT.

Usage (torch, transformers 5.x and peft 0.21 installed; runs on the CPU in float32, seconds):
  python3 scripts/make_reference_cases.py OUT_DIR            # e.g. test/fixtures
  python3 scripts/make_reference_cases.py OUT_DIR --only tied-bias

For each case it creates OUT_DIR/llama-<case>/ holding
  base/                 the tiny random model as transformers' save_pretrained wrote it
  adapter/              the LoRA adapter as PEFT's save_pretrained wrote it
  golden.safetensors    input_ids, attention_mask (int64 [2, 12]); logits_base, logits_lora
                        [2, 12, vocab]; loss [1] (labels = input_ids, -100 where the mask is 0);
                        grad.<PEFT key> for every LoRA weight; adamw_losses [3] (the loss before each of
                        three torch.optim.AdamW(lr=1e-2) steps over the adapter); logits_trained and
                        logits_merged (after the steps, and after merge_and_unload); greedy_prompt
                        (left-padded, int64 [2, 6]), greedy_prompt_mask and greedy_tokens ([2, 6 + 6]):
                        greedy decoding with the trained adapter
  meta.json             the case's settings and the library versions
Each directory stays well under 300 KB. The cases cover what llama-tiny-lora does not: tied
embeddings with attention and MLP biases and right padding; rsLoRA with rank/alpha patterns and a regex
target; BF16 weights; Llama 3 rope scaling with an explicit head_dim and sharded weights; left padding
and a Mistral checkpoint.
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
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

SIZES = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = {
    # Tied embeddings: save_pretrained leaves lm_head.weight out. Biases on q, k, v, o and the MLP.
    # Right padding in the second row (the training layout).
    "tied-bias": dict(
        config=dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
        lora=dict(r=4, lora_alpha=8, target_modules=ALL_PROJ),
        padding="right",
    ),
    # rsLoRA (scale alpha / sqrt(r)), per-module ranks and alphas, targets given as a regex string.
    "rslora-patterns": dict(
        config=dict(),
        lora=dict(
            r=8,
            lora_alpha=16,
            use_rslora=True,
            target_modules=r".*\.(q_proj|v_proj|up_proj|down_proj)",
            rank_pattern={"down_proj": 4, "layers.1.self_attn.q_proj": 2},
            alpha_pattern={"up_proj": 4},
        ),
        padding=None,
    ),
    # Weights stored as BF16; the references run on the same values widened to float32.
    "bf16": dict(
        config=dict(),
        lora=dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        padding=None,
        save_dtype=torch.bfloat16,
    ),
    # Llama 3.x rope scaling, head_dim unlike hidden / heads, weights in several shards.
    "rope3-shards": dict(
        config=dict(
            hidden_size=48,
            head_dim=16,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
        lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj"]),
        padding="left",
        max_shard_size="40KB",
    ),
    # A Mistral checkpoint (no sliding window) is the same computation under another name.
    "mistral": dict(
        config=dict(sliding_window=None),
        lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]),
        padding="left",
        arch="mistral",
    ),
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
    if case.get("arch") == "mistral":
        config = MistralConfig(**cfg)
        cls = MistralForCausalLM
    else:
        config = LlamaConfig(**cfg)
        cls = LlamaForCausalLM
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


def make_case(name, case, out_dir, seed):
    torch.manual_seed(seed)
    d = os.path.join(out_dir, f"llama-{name}")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model, cls = build_model(case)
    save_dtype = case.get("save_dtype")
    if save_dtype is not None:
        model.to(save_dtype)
    shard = case.get("max_shard_size")
    model.save_pretrained(os.path.join(d, "base"), safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    # Reload what was written, in float32, so the references use exactly the stored values.
    model = cls.from_pretrained(os.path.join(d, "base"), dtype=torch.float32, attn_implementation="eager").eval()

    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (BATCH, SEQ), dtype=torch.int64)
    mask = attention_mask(case["padding"])
    ids = torch.where(mask == 1, ids, torch.full_like(ids, SIZES["pad_token_id"]))
    labels = torch.where(mask == 1, ids, torch.full_like(ids, -100))

    out = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        out["logits_base"] = model(input_ids=ids, attention_mask=mask).logits

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

    prompt = torch.randint(3, vocab, (BATCH, PROMPT), dtype=torch.int64)
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[1, :2] = 0  # transformers' generate expects left padding
    prompt = torch.where(prompt_mask == 1, prompt, torch.full_like(prompt, SIZES["pad_token_id"]))
    model.generation_config.eos_token_id = None  # decode all NEW tokens: no early stop to compare
    with torch.no_grad():
        gen = pm.generate(
            input_ids=prompt,
            attention_mask=prompt_mask,
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=SIZES["pad_token_id"],
        )
    assert gen.shape == (BATCH, PROMPT + NEW), gen.shape
    out["greedy_prompt"], out["greedy_prompt_mask"], out["greedy_tokens"] = prompt, prompt_mask, gen

    merged = pm.merge_and_unload()
    with torch.no_grad():
        out["logits_merged"] = merged(input_ids=ids, attention_mask=mask).logits

    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "golden.safetensors"))
    meta = {
        "case": name,
        "seed": seed,
        "config": {k: v for k, v in case["config"].items()},
        "lora_config": case["lora"],
        "padding": case["padding"],
        "save_dtype": str(save_dtype) if save_dtype is not None else "float32",
        "max_shard_size": shard,
        "arch": case.get("arch", "llama"),
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
    print(f"{d}: {size / 1024:.0f} KB, loss {out['loss'].item():.6f}, adamw {losses}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--only", choices=sorted(CASES), action="append")
    a = p.parse_args()
    torch.set_num_threads(1)  # one thread: the same reductions every run
    for i, (name, case) in enumerate(CASES.items()):
        if a.only and name not in a.only:
            continue
        make_case(name, case, a.out_dir, seed=1000 + i)


if __name__ == "__main__":
    main()
