"""Embeddings: an EmbeddingRequest in, one embedder call, OpenAI's response out.

`dimensions` keeps the first n components (Matryoshka); for a model whose vectors are unit length,
the shortened ones are re-normalized, so they stay unit length. `encoding_format: "base64"` sends each
vector as the base64 of its little-endian float32 bytes (what the `openai` client asks for by default
and decodes). `usage` counts the tokens the model read, special tokens included.
"""
from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np

from server.errors import InvalidRequestError
from server.protocol.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from server.registry import Registry


def shorten(vectors: np.ndarray, dimensions: int | None, *, renormalize: bool) -> np.ndarray:
    """The first `dimensions` components of each row; unit length again if `renormalize`."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    out = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)
    if renormalize:
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


def encode_vectors(vectors: np.ndarray, encoding_format: Literal["float", "base64"]) -> list[list[float]] | list[str]:
    if encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    return vectors.astype(np.float32, copy=False).tolist()


async def create_embedding(registry: Registry, request: EmbeddingRequest) -> dict[str, Any]:
    lease = await registry.acquire(request.model, task="embedding")
    try:
        embedder = lease.embedder
        if request.dimensions is not None and request.dimensions > embedder.dimensions:
            raise InvalidRequestError(
                f"Invalid value for 'dimensions': {request.dimensions} is more than this model's "
                f"{embedder.dimensions} dimensions.",
                param="dimensions",
            )
        result = await embedder.embed(request.inputs(), truncate=bool(request.truncate))
        renormalize = embedder.normalized
    finally:
        lease.release()
    vectors = encode_vectors(shorten(result.vectors, request.dimensions, renormalize=renormalize), request.format)
    return EmbeddingResponse.model_construct(
        data=[Embedding.model_construct(embedding=v, index=i) for i, v in enumerate(vectors)],
        model=request.model,
        usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    ).model_dump()
