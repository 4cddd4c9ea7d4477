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

import json
import re
from functools import lru_cache
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


class TokenSpeller:
    """Each token's own bytes and text, for logprobs.

    A token's bytes come from its vocabulary piece: byte-level BPE pieces (GPT-2, Llama 3,
    Qwen) map back through the GPT-2 byte alphabet, SentencePiece pieces turn their "▁"
    into a space and byte-fallback pieces ("<0xE4>") into their byte; added tokens are
    their content. The text is the bytes as UTF-8, with the bytes of a character split
    across tokens written as "\\xNN" escapes, so nothing is lost to U+FFFD (`bytes` is exact).
    Without a tokenizer.json, onnxruntime-genai's single-token decode is the only source.
    """

    def __init__(self, hf_tokenizer: Any | None, decode: Any):
        self._hf = hf_tokenizer
        self._decode = decode  # ids -> str (onnxruntime-genai, special tokens kept)
        self._cache: dict[int, tuple[str, bytes]] = {}
        self._added: dict[int, str] = {}
        self._byte_level = self._byte_fallback = False
        self._space: str | None = None
        if hf_tokenizer is not None:
            self._added = {i: t.content for i, t in hf_tokenizer.get_added_tokens_decoder().items()}
            self._read_decoder(json.loads(hf_tokenizer.to_str()).get("decoder") or {})

    def _read_decoder(self, decoder: dict) -> None:
        for step in decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]:
            kind = step.get("type")
            if kind == "ByteLevel":
                self._byte_level = True
            elif kind == "ByteFallback":
                self._byte_fallback = True
            elif kind == "Metaspace":
                self._space = step.get("replacement", "\u2581")
            elif kind == "Replace" and step.get("content") == " ":
                self._space = (step.get("pattern") or {}).get("String")

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        """(text, bytes) of one token."""
        found = self._cache.get(token_id)
        if found is None:
            raw = self._bytes(token_id)
            found = self._cache[token_id] = (raw.decode("utf-8", errors="backslashreplace"), raw)
        return found

    def _bytes(self, token_id: int) -> bytes:
        if self._hf is None:
            return self._decode([token_id]).encode("utf-8")
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self._hf.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_level:
            alphabet = _byte_decoder()
            if all(c in alphabet for c in piece):
                return bytes(alphabet[c] for c in piece)
        if self._byte_fallback and (match := _BYTE_PIECE.fullmatch(piece)):
            return bytes([int(match.group(1), 16)])
        if self._space:
            return piece.replace(self._space, " ").encode("utf-8")
        return self._hf.decode([token_id], skip_special_tokens=False).encode("utf-8")


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character standing for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


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
