"""Incremental detokenization that ends exactly where transformers' `decode` ends.

The streamed pieces, joined, equal `tokenizer.decode(all_ids, skip_special_tokens=True)`:
bytes of a character split across tokens are held back until the character is
complete, and bytes that never form a valid character become U+FFFD, as
transformers (and the Rust `tokenizers` library under it) render them.
onnxruntime-genai's TokenizerStream silently drops such bytes, so it is only the
fallback for model folders without a `tokenizer.json`.

The method is a sliding window (as in vLLM): decode the ids since the last
character boundary with and without the new token and emit the difference, so
a piece like "▁Hello" keeps its leading space.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

_REPLACEMENT = "\ufffd"


class Detokenizer(Protocol):
    def feed(self, token: int) -> str: ...

    def flush(self) -> str: ...


class IncrementalDecoder:
    """`visible`: special tokens whose text is kept (tool-call markers a parser must see)."""

    def __init__(self, tokenizer: Any, visible: dict[int, str] | None = None):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: a character boundary before the last emitted text
        self._read = 0  # ids up to here have been emitted
        # only tokens that decoding would skip need help; the others decode to their text anyway
        self._visible = {i: t for i, t in (visible or {}).items() if not self._decode([i])}

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def feed(self, token: int) -> str:
        if token in self._visible:  # a special token splits the text, as it does in `decode`
            text = self.flush()
            self._ids.append(token)
            self._prefix = self._read = len(self._ids)
            return text + self._visible[token]
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""  # nothing new yet, or a character still incomplete
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """What is still held back (bytes that never completed a character) at the end."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


class GenaiStreamDecoder:
    """onnxruntime-genai's TokenizerStream, plus the text of special tokens that must stay visible."""

    def __init__(self, stream: Any, special_text: dict[int, str]):
        self._stream = stream
        self._special = special_text

    def feed(self, token: int) -> str:
        return self._stream.decode(token) + self._special.get(token, "")

    def flush(self) -> str:
        return ""


def load_hf_tokenizer(folder: Path) -> Any | None:
    """The folder's `tokenizer.json` through the `tokenizers` library, or None when there is none."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
