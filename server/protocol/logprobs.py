"""Logprobs in OpenAI's two shapes: chat's `choices[].logprobs.content[]` and legacy completions'
parallel lists (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`). Pure data."""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from pydantic import BaseModel

from ortserve.server.engine.generation import TokenLogprob


# ---- chat ------------------------------------------------------------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]

    @classmethod
    def of(cls, item: TokenLogprob) -> ChatCompletionTokenLogprob:
        return cls(
            token=item.token,
            logprob=item.logprob,
            bytes=list(item.bytes),
            top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in item.top],
        )


class ChoiceLogprobs(BaseModel):
    content: list[ChatCompletionTokenLogprob] | None
    refusal: list[ChatCompletionTokenLogprob] | None = None

    @classmethod
    def of(cls, items: Iterable[TokenLogprob]) -> ChoiceLogprobs:
        return cls(content=[ChatCompletionTokenLogprob.of(item) for item in items])


# ---- completions -------------------------------------------------------------
class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]

    @classmethod
    def of(cls, items: Iterable[TokenLogprob], offsets: TextOffsets) -> CompletionLogprobs:
        """`offsets` continues across calls (a stream's chunks). A token nothing predicts (a prompt's
        first) has null `token_logprobs` and `top_logprobs` entries."""
        out = cls(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for item in items:
            out.tokens.append(item.token)
            out.token_logprobs.append(item.logprob)
            out.top_logprobs.append(None if item.logprob is None else _top_dict(item))
            out.text_offset.append(offsets.advance(item.bytes))
        return out

    def extend(self, other: CompletionLogprobs) -> CompletionLogprobs:
        self.tokens += other.tokens
        self.token_logprobs += other.token_logprobs
        self.top_logprobs += other.top_logprobs
        self.text_offset += other.text_offset
        return self


def _top_dict(item: TokenLogprob) -> dict[str, float]:
    """The likeliest tokens and the one sampled (so up to k + 1 entries, as OpenAI), best first."""
    top: dict[str, float] = {t.token: t.logprob for t in item.top if t.logprob is not None}
    top.setdefault(item.token, item.logprob)  # type: ignore[arg-type]
    return dict(sorted(top.items(), key=lambda kv: -kv[1]))


class TextOffsets:
    """`text_offset`: where each token starts in the choice's text, in characters.

    Tokens are counted by their UTF-8 bytes, so a token that ends inside a character and
    the token that completes it both point at that character.
    """

    def __init__(self, start: int = 0):
        self.chars = start
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def advance(self, raw: bytes) -> int:
        at = self.chars
        self.chars += len(self._decoder.decode(raw))
        return at
