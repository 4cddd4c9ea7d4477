"""What the server needs to know about a chat model's template: its tool-call format, marker tokens and
reasoning markers.

Read once per model folder (and conversion) from the files onnxruntime-genai reads
too: `chat_template.jinja` or `tokenizer_config.json`'s "chat_template", and the
special tokens in `tokenizer.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ortserve.server.chat.reasoning import ReasoningMarkers, find_reasoning_markers
from ortserve.server.chat.tool_parsers import ToolParser, select_tool_parser


@dataclass(frozen=True)
class ChatProfile:
    tool_parser: type[ToolParser]
    special_tokens: dict[str, int] = field(default_factory=dict)  # the parser's and reasoning markers that are special
    template: str | None = None
    reasoning: ReasoningMarkers | None = None  # a reasoning model's markers (chat/reasoning.py)


def read_chat_template(folder: Path) -> str | None:
    """The template text (all named templates joined, when there are several)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = _read_json(folder / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        return "\n".join(t.get("template", "") for t in template if isinstance(t, dict)) or None
    return template if isinstance(template, str) else None


def special_tokens(folder: Path, texts: tuple[str, ...]) -> dict[str, int]:
    """Which of `texts` are special tokens in the folder's tokenizer.json, with their ids."""
    if not texts:
        return {}
    wanted = set(texts)
    added = _read_json(folder / "tokenizer.json").get("added_tokens") or []
    return {t["content"]: int(t["id"]) for t in added if t.get("special") and t.get("content") in wanted}


@lru_cache(maxsize=64)
def _profile(folder: str, family: str | None, _version: Any) -> ChatProfile:
    path = Path(folder)
    template = read_chat_template(path)
    parser = select_tool_parser(template, family)
    markers = find_reasoning_markers(template)
    texts = parser.special_texts() + ((markers.open, markers.close) if markers else ())
    return ChatProfile(parser, special_tokens(path, texts), template, markers)


def chat_profile(folder: Path, manifest: dict[str, Any]) -> ChatProfile:
    """The profile of a stored model (cached until the model is converted again)."""
    return _profile(str(folder), manifest.get("family"), manifest.get("created"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
