"""`RunnerModel`: what every request of a runner process shares, and the one loader that builds it.

Both schedulers (generator_scheduler.py, engine_scheduler.py) load their model here: og.Config with the
device's execution provider, og.Model, the tokenizers, and the facts read from genai_config.json (context,
vocabulary, end tokens, tool-call markers, the logits output, the vision processor). The og.Engine path
adds its og.Engine on top (engine_scheduler.EngineModel).

Imported only by the runner process (it imports onnxruntime-genai when loading).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortserve.server.engine import devices, ipc
from ortserve.server.engine.detok import (
    Detokenizer,
    GenaiStreamDecoder,
    IncrementalDecoder,
    TokenSpeller,
    load_hf_tokenizer,
)

FIM_CANDIDATES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Granite, ...
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    (
        "<｜fim▁begin｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁end｜>",
    ),  # DeepSeek-Coder: begin = prefix, hole = suffix, end = middle
)


def find_fim_tokens(to_token_id: Any) -> tuple[str, str, str] | None:
    """The (prefix, suffix, middle) special tokens of the first family whose three tokens all exist."""
    for names in FIM_CANDIDATES:
        if all(to_token_id(name) >= 0 for name in names):
            return names
    return None


@dataclass
class RunnerModel:
    """What every request of a runner shares: the og.Model, its tokenizers and facts from genai_config.json."""

    og_model: Any  # og.Model; None until first needed when loaded lazily (see `og`)
    tokenizer: Any  # og.Tokenizer, special tokens skipped when decoding output
    raw_tokenizer: Any  # og.Tokenizer that keeps special tokens (echoing a prompt given as ids)
    context_length: int  # served context (num_ctx), <= the model's
    vocab_size: int
    eos_ids: frozenset[int]
    bos_id: int | None
    special_text: dict[int, str] = field(default_factory=dict)  # skipped tokens that must stay visible (<tool_call>)
    hf_tokenizer: Any = None  # tokenizers.Tokenizer from tokenizer.json: decodes output exactly as transformers
    guidance_error: str | None = None  # why grammars are not enforced (set by the start-up probe)
    grammar_errors: OrderedDict = field(default_factory=OrderedDict)  # (kind, data) -> compile error or None
    logits_output: str = "logits"  # the model's output name for logits (every position of a prefill chunk)
    speller: Any = None  # TokenSpeller: each token's text and bytes, for logprobs
    processor: Any = None  # og.MultiModalProcessor for models with a vision section (images in chats)
    model_type: str = ""  # onnxruntime-genai's model type (picks the image marker its processor reads)
    kv_bytes_per_token: int = 0  # KV cache bytes per token of a generator's max_length (the prompt cache's measure)
    og_config: Any = None  # og.Config the og.Model is made from, when it is made lazily
    guidance_probe: Any = None  # runs the start-up grammar probe when it was put off (lazy og.Model); then None

    def __post_init__(self) -> None:
        if self.speller is None:
            self.speller = TokenSpeller(self.hf_tokenizer, self.raw_tokenizer.decode)

    def og(self) -> Any:
        """The og.Model (made now when it was put off: the batched path needs it only for the requests it leaves to
        og.Generator, and until then the process holds one copy of the weights, not two)."""
        if self.og_model is None:
            import onnxruntime_genai as og

            self.og_model = og.Model(self.og_config)
        return self.og_model

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled exactly `text`, if there is one."""
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer.token_to_id(text)
        found = int(self.tokenizer.to_token_id(text))
        return found if 0 <= found < self.vocab_size and self.raw_tokenizer.decode([found]) == text else None

    def detokenizer(self, keep_special: tuple[str, ...] = ()) -> Detokenizer:
        """`keep_special`: special tokens this request must see as text (tool-call markers)."""
        visible = {found: text for text in keep_special if (found := self.token_id(text)) is not None}
        if self.hf_tokenizer is not None:
            return IncrementalDecoder(self.hf_tokenizer, visible)
        # og's stream already spells tokens it does not skip (non-special added tokens): add only the others
        visible = {i: t for i, t in {**self.special_text, **visible}.items() if self.tokenizer.decode([i]) != t}
        return GenaiStreamDecoder(self.tokenizer.create_stream(), visible)

    def info(self, options: ipc.RunnerOptions, device: str) -> ipc.RunnerInfo:
        """What the runner reports to the server once loaded; `device`: the one it really runs on."""
        fim_tokens = find_fim_tokens(self.tokenizer.to_token_id)
        return ipc.RunnerInfo(self.context_length, fim_tokens, device, options.threads, self.guidance_error)


def kv_bytes_per_token(decoder: dict, item_size: int = 4) -> int:
    """Bytes of KV cache per token: keys and values of every layer (`item_size`: 4 for float32, onnxruntime-genai's
    CPU models; the generator scheduler measures the real one once loaded)."""
    layers = int(decoder.get("num_hidden_layers", 0))
    heads = int(decoder.get("num_key_value_heads", decoder.get("num_attention_heads", 0)))
    head_size = int(decoder.get("head_size", 0))
    return 2 * layers * heads * head_size * item_size


def read_genai_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))


def load_runner_model(
    folder: Path, options: ipc.RunnerOptions, *, lazy: bool = False, overlay: dict | None = None
) -> RunnerModel:
    """Load `folder`'s model on `options.device` (in the runner process). The guidance probe is the caller's.
    `lazy`: the og.Model is made on first use (`RunnerModel.og`); a model with a vision section never is.
    `overlay`: genai_config values set for this load only (og.Config.overlay; the files are never edited)."""
    import onnxruntime_genai as og

    spec = read_genai_config(folder)["model"]
    config = og.Config(str(folder))
    if overlay:
        config.overlay(json.dumps(overlay))
    devices.configure(config, options.device, options.threads, og)
    model = None if lazy and not spec.get("vision") else og.Model(config)
    tokenizer, raw_tokenizer = og.Tokenizer(config), og.Tokenizer(config)
    raw_tokenizer.update_options(skip_special_tokens=False)

    model_ctx = int(spec["context_length"])
    vocab_size = int(spec["vocab_size"])
    eos = spec.get("eos_token_id", [])
    eos_ids = frozenset(int(t) for t in (eos if isinstance(eos, list) else [eos])) | frozenset(tokenizer.eos_token_ids)
    # og skips special tokens when decoding; tool-call markers must stay visible to the tool-call parsers
    special_text = {
        int(spec[key]): raw_tokenizer.decode([int(spec[key])])
        for key in ("bot_token_id", "eot_token_id")
        if isinstance(spec.get(key), int) and 0 <= spec[key] < vocab_size
    }
    bos = spec.get("bos_token_id")
    return RunnerModel(
        og_model=model,
        tokenizer=tokenizer,
        raw_tokenizer=raw_tokenizer,
        context_length=min(options.num_ctx, model_ctx) if options.num_ctx else model_ctx,
        vocab_size=vocab_size,
        eos_ids=eos_ids,
        bos_id=bos if isinstance(bos, int) and bos >= 0 else None,
        special_text=special_text,
        hf_tokenizer=load_hf_tokenizer(folder),
        logits_output=str(spec.get("decoder", {}).get("outputs", {}).get("logits", "logits")),
        model_type=str(spec.get("type", "")),
        kv_bytes_per_token=kv_bytes_per_token(spec.get("decoder", {})),
        # images go through onnxruntime-genai's multimodal processor (vision encoder + embeddings at prefill)
        processor=model.create_multimodal_processor() if model is not None and spec.get("vision") else None,
        og_config=config,
    )
