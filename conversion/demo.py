"""Tiny random-weight chat checkpoints, built locally (no hub).

Used by the test suite and by `ortserve serve` on an empty store (the demo chat
model, clearly labelled as random weights). The tokenizer is a byte-level BPE
trained here with `tokenizers`; the chat template is ChatML with tools
(system/user/assistant/tool messages, `<tool_call>` blocks).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added but not special (as in Qwen2.5): decoding keeps them, so tool calls stay visible in the output text.
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]

_CORPUS = """\
The quick brown fox jumps over the lazy dog. Hello world, how are you today?
I am a small language model with random weights, so what I say means nothing.
You are a helpful assistant. Answer the question. What is the weather in Paris?
The weather in Paris is sunny with a light breeze and a temperature of 21 degrees.
Tools: get_weather, search, calculator. {"name": "get_weather", "arguments": {"city": "Paris"}}
def main():\n    print("hello")\n    return 0\n
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and punctuation . , ; : ! ? ( ) [ ] { } " ' - _ / \\ * + = < > | @ # $ % ^ & ~
system user assistant tool function arguments name content role type object string integer number boolean array
Bonjour le monde, ça va? Grüße aus München. ¿Qué tal? こんにちは世界 你好世界 Привет мир 🙂
"""


def train_tokenizer(vocab_size: int = 1024):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _CORPUS.splitlines()
    tok.train_from_iterator([" ".join(lines[i:] + lines[:i]) for i in range(len(lines))] * 20, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return tok


def pad_vocabulary(tok, size: int):
    """`tok` with plain tokens ` t<N>` up to `size` ids (benchmark shapes with a real model's vocabulary size):
    never produced by encoding (no merges), but each decodes to text, so every generated token is seen."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    vocab.update({added["content"]: added["id"] for added in spec["added_tokens"]})  # keep their ids
    for i in range(tok.get_vocab_size(), size):
        vocab[f"\u0120t{i}"] = i  # Ġ: the byte-level spelling of a leading space
    return Tokenizer.from_str(json.dumps(spec))


def chat_template() -> str:
    return resources.files("ortserve.conversion").joinpath("templates/chatml_tools.jinja").read_text(encoding="utf-8")


def build_tiny_chat_checkpoint(
    out_dir: Path,
    architecture: str = "llama",
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    context_length: int = 2048,
    initializer_range: float = 0.02,
    **config_overrides,
) -> Path:
    """Write a random-weight Llama- or Qwen2-architecture checkpoint with tokenizer and chat template.

    `config_overrides` go to the transformers config (benchmarks use them for realistic shapes).
    """
    import torch
    import transformers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    if int(config_overrides.get("vocab_size", 0)) > tok.get_vocab_size():
        tok = pad_vocabulary(tok, int(config_overrides["vocab_size"]))
    tok.save(str(out_dir / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + TOOL_TOKENS}
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer" if architecture == "qwen2" else "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "model_max_length": context_length,
        "chat_template": chat_template(),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")

    common = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context_length,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    common.update(config_overrides)  # e.g. num_attention_heads, intermediate_size for benchmark shapes
    configs = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}
    if architecture not in configs:
        raise ValueError(f"unknown demo architecture {architecture!r}; choose from {sorted(configs)}")
    config = configs[architecture](**common)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        f"# ortserve tiny demo ({architecture})\n\nRandom weights: its output is gibberish by design. "
        "It exists to test and demonstrate the server without downloading anything.\n",
        encoding="utf-8",
    )
    return out_dir
