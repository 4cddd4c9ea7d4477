"""A tiny reasoning model: a copy of the tiny Qwen2 chat model whose chat template is shaped like Qwen3's
(`<think>` ... `</think>`, the `enable_thinking` switch). Like DeepSeek-R1's and Qwen3-Thinking's templates it
opens `<think>` itself, so the model's output starts inside the reasoning; with `enable_thinking` false it
writes an empty `<think>\\n\\n</think>\\n\\n` block, as Qwen3's does, and the output is the answer.

Its markers are plain text (BPE pieces), as Qwen3's are text too (added tokens, not special ones). With
`special_markers` the copy's two added tokens (`<tool_call>`, `</tool_call>`) become the special tokens
`<think>` and `</think>` instead: the shape of a tokenizer whose reasoning markers are special. With
`opens=False` the template is Qwen3's own: it leaves `<think>` to the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ortserve.core.store import MANIFEST

GENERATION_PROMPT = (
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}{%- endif %}"
)
# Qwen3's own: with thinking on the model opens `<think>` itself
QWEN3_GENERATION_PROMPT = (
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def add_reasoning_model(
    models: Path,
    source: str = "tiny-qwen",
    name: str = "tiny-think",
    *,
    special_markers: bool = False,
    opens: bool = True,
) -> str:
    """Copy `source`'s folder to `name` in the store at `models`, with the Qwen3-shaped template."""
    target = models / name
    shutil.copytree(models / source, target)
    if special_markers:
        _make_markers_special(target / "tokenizer.json")
    template = (target / "chat_template.jinja").read_text(encoding="utf-8")
    head, _, _ = template.rpartition("{%- if add_generation_prompt %}")
    generation = GENERATION_PROMPT if opens else QWEN3_GENERATION_PROMPT
    (target / "chat_template.jinja").write_text(head + generation, encoding="utf-8")
    manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    manifest["name"] = name
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return name


def _make_markers_special(path: Path) -> None:
    spec = json.loads(path.read_text(encoding="utf-8"))
    renamed = {"<tool_call>": "<think>", "</tool_call>": "</think>"}
    for token in spec["added_tokens"]:
        if token["content"] in renamed:
            token.update(content=renamed[token["content"]], special=True)
    path.write_text(json.dumps(spec), encoding="utf-8")
