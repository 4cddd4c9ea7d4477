"""/v1/embeddings: request and response models.

`input` is a string, an array of strings, an array of token ids, or an array of token-id arrays,
as in OpenAI's API. Token ids are the *served model's own* tokenizer ids (not tiktoken's), without
special tokens: the server adds them as it does for text, so ids give the vector of the text they
encode. Extension: `truncate: true` cuts over-long inputs at the model's limit instead of a 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ortserve.server.errors import InvalidRequestError
from ortserve.server.protocol.common import KeepAlive, ModelName, OpenAIModel, User

MAX_INPUTS = 2048  # OpenAI's limit on the items of one request

_SHAPE = "a string, an array of strings, an array of token ids, or an array of token-id arrays"


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class EmbeddingRequest(OpenAIModel):
    model: ModelName
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None  # None: float
    dimensions: int | None = Field(None, ge=1, description="keep the first n dimensions (Matryoshka)")
    user: User = None
    truncate: bool | None = Field(False, description="extension: cut inputs past the model's limit, no 400")
    keep_alive: KeepAlive = None

    def inputs(self) -> list[str] | list[list[int]]:
        """One entry per vector: texts, or token-id lists."""
        x = self.input
        if isinstance(x, str):
            return [x]
        if x and all(_is_id(t) for t in x):
            return [list(x)]
        return list(x)

    def check(self) -> None:
        x = self.input
        if isinstance(x, list):
            if not x:
                raise InvalidRequestError("Invalid value for 'input': it must not be an empty array.", param="input")
            if len(x) > MAX_INPUTS:
                raise InvalidRequestError(
                    f"Invalid value for 'input': at most {MAX_INPUTS} inputs per request, got {len(x)}.",
                    param="input",
                )
            texts, ids = all(isinstance(t, str) for t in x), all(_is_id(t) for t in x)
            arrays = all(isinstance(t, list) and all(_is_id(i) for i in t) for t in x)
            if not (texts or ids or arrays):
                raise InvalidRequestError(f"Invalid value for 'input': expected {_SHAPE}.", param="input")
        items = self.inputs()
        for i, item in enumerate(items):
            which = "'input'" if len(items) == 1 else f"'input' item {i}"
            if isinstance(item, str) and not item:
                raise InvalidRequestError(f"Invalid value for {which}: it must not be an empty string.", param="input")
            if isinstance(item, list) and not item:
                raise InvalidRequestError(f"Invalid value for {which}: it must not be an empty array.", param="input")

    @property
    def format(self) -> Literal["float", "base64"]:
        return self.encoding_format or "float"


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str  # base64: little-endian float32 bytes
    index: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
