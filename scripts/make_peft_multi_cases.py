"""Reference cases for PEFT's own API (named adapters on one base), made with PEFT itself.

Writes test/fixtures/llama-peft-multi/:
  adapters/                 PeftModel.save_pretrained of all adapters, PEFT's multi-adapter layout:
                            "default" at the top, b/, c/, cat/ and linear/ below it
  golden.safetensors        input_ids and the logits of each case
  meta.json                 the settings, the versions, and which logits tensor is which case

The base model is test/fixtures/llama-tiny-lora/base (made by make_reference_cases.py).
Three adapters with different targets, ranks, alphas and scale rules:
  default: r=4, alpha=8, q_proj + v_proj, alpha_pattern v_proj -> 12
  b:       r=2, alpha=3, rsLoRA, o_proj + v_proj + down_proj, rank_pattern down_proj -> 3
  c:       r=4, alpha=16, v_proj + gate_proj (same rank as default, for "linear")
Cases: each adapter set, adapters disabled, mixed rows via adapter_names, add_weighted_adapter "cat"
(default + b) and "linear" (default + c). init_lora_weights=False so every adapter starts non-zero.

Run with a Python that has torch, transformers 5.17 and peft 0.21:
  /tmp/hf/bin/python scripts/make_peft_multi_cases.py
"""

import json
import os

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = "test/fixtures/llama-tiny-lora/base"  # relative to ROOT, so the saved configs name it portably
OUT = os.path.join(ROOT, "test", "fixtures", "llama-peft-multi")

CONFIGS = {
    "default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], alpha_pattern={"v_proj": 12}),
    "b": dict(
        r=2,
        lora_alpha=3,
        use_rslora=True,
        target_modules=["o_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 3},
    ),
    "c": dict(r=4, lora_alpha=16, target_modules=["v_proj", "gate_proj"]),
}
MIXED = ["default", "__base__", "b"]
CAT = dict(adapters=["default", "b"], weights=[0.7, 0.4])
LINEAR = dict(adapters=["default", "c"], weights=[0.6, -0.3])


def main():
    os.chdir(ROOT)
    torch.manual_seed(20261201)
    base = LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
    ids = torch.randint(0, base.config.vocab_size, (3, 7))

    def config(name):
        return LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, lora_dropout=0.0, **CONFIGS[name])

    pm = get_peft_model(base, config("default"))
    pm.add_adapter("b", config("b"))
    pm.add_adapter("c", config("c"))
    pm.eval()
    trainable, total = pm.get_nb_trainable_parameters()

    out = {"input_ids": ids.to(torch.int32)}
    with torch.no_grad():
        for name in CONFIGS:
            pm.set_adapter(name)
            out[f"logits_{name}"] = pm(input_ids=ids).logits
        pm.set_adapter("default")
        with pm.disable_adapter():
            out["logits_disabled"] = pm(input_ids=ids).logits
        out["logits_mixed"] = pm(input_ids=ids, adapter_names=MIXED).logits
        pm.add_weighted_adapter(CAT["adapters"], CAT["weights"], "cat", combination_type="cat")
        pm.add_weighted_adapter(LINEAR["adapters"], LINEAR["weights"], "linear", combination_type="linear")
        for name in ("cat", "linear"):
            pm.set_adapter(name)
            out[f"logits_{name}"] = pm(input_ids=ids).logits

    os.makedirs(OUT, exist_ok=True)
    pm.save_pretrained(os.path.join(OUT, "adapters"))
    os.remove(os.path.join(OUT, "adapters", "README.md"))  # PEFT's model-card template, not ours to ship
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "golden.safetensors"))
    meta = {
        "base": BASE,
        "adapters": CONFIGS,
        "mixed_adapter_names": MIXED,
        "trainable_parameters_after_adding_b_and_c": {"trainable": trainable, "all": total},
        "cat": CAT,
        "linear": LINEAR,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", OUT, sorted(out))


if __name__ == "__main__":
    main()
