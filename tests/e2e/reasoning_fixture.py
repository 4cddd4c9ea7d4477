"""A tiny reasoning model: a copy of the tiny Qwen2 chat model whose chat template is shaped like Qwen3's
(`<think>` ... `</think>`, the `enable_thinking` switch). Like DeepSeek-R1's and Qwen3-Thinking's templates it
opens `<think>` itself, so the model's output starts inside the reasoning; with `enable_thinking` false it
writes an empty `<think>\\n\\n</think>\\n\\n` block, as Qwen3's does, and the output is the answer."""

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


def add_reasoning_model(models: Path, source: str = "tiny-qwen", name: str = "tiny-think") -> str:
    """Copy `source`'s folder to `name` in the store at `models`, with the Qwen3-shaped template."""
    target = models / name
    shutil.copytree(models / source, target)
    template = (target / "chat_template.jinja").read_text(encoding="utf-8")
    head, _, _ = template.rpartition("{%- if add_generation_prompt %}")
    (target / "chat_template.jinja").write_text(head + GENERATION_PROMPT, encoding="utf-8")
    manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    manifest["name"] = name
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return name
