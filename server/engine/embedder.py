"""The embedding backend interface the HTTP layer speaks to (generation's is `generation.TextGenerator`).

An `Embedder` turns texts, or token-id sequences in the model's own vocabulary (without special
tokens: the embedder adds those, as for text), into one vector per input, in input order. It raises
`ortserve.server.errors.APIError`s: `ContextLengthError` for an over-long input, `InvalidRequestError` for
token ids outside the vocabulary (both with param "input"), `BackendError` when the backend fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

EmbeddingInput = str | Sequence[int]


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [inputs, dimensions], row i for input i
    token_counts: tuple[int, ...]  # tokens the model read per input, special tokens included

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)


class Embedder(Protocol):
    """One loaded embedding model."""

    dimensions: int  # the size of its vectors
    max_input_tokens: int  # per input, special tokens included
    normalized: bool  # whether its vectors are unit length
    device: str  # the execution provider it runs on: "cpu", ...

    async def embed(self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False) -> Embeddings:
        """Vectors for `inputs` (all texts or all token-id sequences). `truncate`: cut over-long inputs
        at max_input_tokens instead of raising ContextLengthError."""
        ...

    async def close(self) -> None: ...
