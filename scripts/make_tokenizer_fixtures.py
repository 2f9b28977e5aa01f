#!/usr/bin/env python3
"""Writes tokenizer fixtures for AutoTokenizer's tests with the Python `tokenizers` library (and
transformers for the chat-template references).

Usage (tokenizers and transformers 5.17 installed; seconds):
  python3 scripts/make_tokenizer_fixtures.py OUT_DIR        # e.g. test/fixtures

It creates two directories, each a small tokenizer trained here on a few English, accented, CJK and
emoji sentences, saved as transformers saves a checkpoint's tokenizer:
  tokenizer-bytelevel/  byte-level BPE as Qwen2/2.5 and SmolLM use (NFC, Qwen's split regex, GPT-2 byte
                        alphabet), ChatML special tokens and Qwen2-Instruct's chat template
  tokenizer-llama/      Llama/SentencePiece-style BPE ("▁" for spaces, <0xNN> byte fallback, <s> added
                        in front) with Llama 2's chat template
Each holds tokenizer.json, tokenizer_config.json and cases.json: for every text, the ids with and
without special tokens and the decoding of those ids with and without special tokens (tokenizers'
own encode/decode), and for every conversation the chat template rendered by transformers'
apply_chat_template with and without the generation prompt.
"""
import argparse
import json
import os
import shutil

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "LoRA adapters fine-tune large language models with few parameters.",
    "Low-rank adaptation keeps the base weights frozen and trains two small matrices.",
    "She said: \"it's 3917+2=5139\", then we'll see what they've done.",
    "Café, naïve, résumé, jalapeño and Zürich are words with accents.",
    "日本語のテキストも少し入れておきます。中文也可以。",
    "Emoji 🙂🚀 and symbols ∑ ≤ ≥ → appear sometimes.",
    "    indented code:\n\tdef f(x):\n\t\treturn x * 2\n",
    "Numbers like 1234567890 and 3.14159 split into digits.",
    "Hello world! Hello there, hello again.",
] * 20

TEXTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing  ",
    "Café naïve Zürich",
    "日本語のテキスト",
    "unseen emoji 🦙 and ∫ symbols",
    "line one\nline two\n\n\tindented",
    "it's 3917+2=5139, isn't it?",
    "",
    "<|im_start|>user\nHi<|im_end|>",
    "<s>[INST] hi [/INST]",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello, who are you?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
    ],
]

# Qwen2-Instruct's chat template (ChatML with a default system prompt), as its tokenizer_config.json has it.
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama 2 chat's template: [INST] turns, <<SYS>> folded into the first user turn, bos/eos around turns.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Qwen2's pre-tokenizer split: contractions, letters, single digits, punctuation runs, newlines, spaces.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def bytelevel():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "chat_template": QWEN2_TEMPLATE,
        "model_max_length": 32768,
        "tokenizer_class": "Qwen2Tokenizer",
        "clean_up_tokenization_spaces": False,
    }
    return tok, config


def llama():
    # Train a plain BPE over "▁"-joined words, then lay the vocabulary out as Llama's: <unk> <s> </s>,
    # the 256 byte tokens <0x00>..<0xFF>, then the learned pieces.
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[], show_progress=False)
    base.train_from_iterator(CORPUS, trainer)
    learned = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)],
    )
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": LLAMA2_TEMPLATE,
        "model_max_length": 4096,
        "tokenizer_class": "LlamaTokenizer",
        "clean_up_tokenization_spaces": False,
        "legacy": False,
    }
    return tok, config


def write(out_dir, name, tok, config):
    d = os.path.join(out_dir, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    # Read back what was written, as a user of the checkpoint would.
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    fast = PreTrainedTokenizerFast.from_pretrained(d)
    cases = {"texts": [], "chats": []}
    for text in TEXTS:
        with_special = tok.encode(text, add_special_tokens=True).ids
        without = tok.encode(text, add_special_tokens=False).ids
        cases["texts"].append({
            "text": text,
            "ids": with_special,
            "ids_no_special": without,
            "decoded": tok.decode(with_special, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
        })
    for messages in CONVERSATIONS:
        rendered = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        prompt = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        cases["chats"].append({
            "messages": messages,
            "rendered": rendered,
            "rendered_generation_prompt": prompt,
            "ids_generation_prompt": tok.encode(prompt, add_special_tokens=False).ids,
        })
    cases["eos_token_id"] = tok.token_to_id(config["eos_token"])
    cases["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    import tokenizers, transformers
    cases["versions"] = {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__}
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
    print(f"{d}: vocab {cases['vocab_size']}, {len(TEXTS)} texts, {len(CONVERSATIONS)} chats")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    a = p.parse_args()
    write(a.out_dir, "tokenizer-bytelevel", *bytelevel())
    write(a.out_dir, "tokenizer-llama", *llama())


if __name__ == "__main__":
    main()
