"""Loads a folder written by scripts/peft_roundtrip.ts with PEFT and compares PEFT's logits with ours.

  /tmp/hf/bin/python scripts/check_peft_roundtrip.py /tmp/peft-roundtrip

"default" is read from the folder itself and every other adapter from its subfolder (PEFT's layout for
save_pretrained of several adapters); each adapter's logits and the mixed adapter_names rows are compared
by relative error ||peft - ours|| / ||ours||. Exits non-zero above 1e-5.
"""

import json
import os
import sys

import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/peft-roundtrip"
    ours = load_file(os.path.join(out, "ours.safetensors"))
    with safe_open(os.path.join(out, "ours.safetensors"), "pt") as f:
        info = f.metadata()
    names = json.loads(info["adapters"])
    mixed = json.loads(info["mixed"])
    base = LlamaForCausalLM.from_pretrained("test/fixtures/llama-tiny-lora/base", dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, out, adapter_name="default")
    for name in names:
        if name != "default":
            pm.load_adapter(os.path.join(out, name), adapter_name=name)
    pm.eval()
    ids = ours["input_ids"].long()
    worst = 0.0
    with torch.no_grad():
        cases = [(n, dict(), f"logits_{n}") for n in names] + [("mixed", dict(adapter_names=mixed), "logits_mixed")]
        for name, kw, key in cases:
            if name != "mixed":
                pm.set_adapter(name)
            theirs = pm(input_ids=ids, **kw).logits
            err = float((theirs - ours[key]).norm() / ours[key].norm())
            worst = max(worst, err)
            print(f"{key}: relative error {err:.3e}")
    print(f"worst {worst:.3e}")
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
