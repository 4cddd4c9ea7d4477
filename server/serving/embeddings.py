"""Embeddings: an EmbeddingRequest in, one embedder call, OpenAI's response out.

`dimensions` keeps the first n components (Matryoshka); for a model whose vectors are unit length,
the shortened ones are re-normalized, so they stay unit length. `encoding_format: "base64"` sends each
vector as the base64 of its little-endian float32 bytes (what the `openai` client asks for by default
and decodes). `usage` counts the tokens the model read, special tokens included.

A large response (2,048 inputs x 384 floats: `json.dumps` alone holds the GIL for ~0.4 s) is encoded
and sent in pieces of `ROWS_PER_PIECE` vectors, so other requests run between the pieces; the bytes
are the same JSON. Responses are built as plain dicts in `EmbeddingResponse`'s shape (pydantic would
copy every float once more).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ortserve.server import request_log
from ortserve.server.errors import InvalidRequestError
from ortserve.server.protocol.embeddings import EmbeddingRequest
from ortserve.server.registry import Registry

STREAM_VALUES = 1 << 18  # responses with more numbers than this are sent in pieces
ROWS_PER_PIECE = 64


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


def _items(vectors: np.ndarray, encoding_format: Literal["float", "base64"], start: int = 0) -> list[dict]:
    encoded = encode_vectors(vectors, encoding_format)
    return [{"object": "embedding", "embedding": e, "index": start + i} for i, e in enumerate(encoded)]


def response_body(
    vectors: np.ndarray, encoding_format: Literal["float", "base64"], model: str, prompt_tokens: int
) -> dict[str, Any]:
    """The whole response as one dict (the shape of `EmbeddingResponse`)."""
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": _items(vectors, encoding_format), "model": model, "usage": usage}


async def response_pieces(
    vectors: np.ndarray,
    encoding_format: Literal["float", "base64"],
    model: str,
    prompt_tokens: int,
    rows: int = ROWS_PER_PIECE,
) -> AsyncIterator[bytes]:
    """The same JSON as `response_body`, encoded `rows` vectors at a time."""
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    yield b'{"object": "list", "data": ['
    for start in range(0, len(vectors), rows):
        items = json.dumps(_items(vectors[start : start + rows], encoding_format, start))[1:-1]
        yield (", " if start else "").encode() + items.encode()
        await asyncio.sleep(0)  # let other requests run between the pieces
    yield f'], "model": {json.dumps(model, ensure_ascii=False)}, "usage": {json.dumps(usage)}}}'.encode()


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # one row per input, cut to `dimensions` (and unit length again if the model's were)
    prompt_tokens: int
    loaded_ns: int  # time.monotonic_ns() when the model was ready (Ollama reports the load's duration)


async def embed(registry: Registry, request: EmbeddingRequest) -> Embedded:
    """The vectors for a request (the one engine call /v1/embeddings and Ollama's /api/embed share)."""
    lease = await registry.acquire(request.model, task="embedding", keep_alive=request.keep_alive)
    loaded = time.monotonic_ns()
    try:
        embedder = lease.embedder
        if request.dimensions is not None and request.dimensions > embedder.dimensions:
            raise InvalidRequestError(
                f"Invalid value for 'dimensions': {request.dimensions} is more than this model's "
                f"{embedder.dimensions} dimensions.",
                param="dimensions",
            )
        result = await embedder.embed(request.inputs(), truncate=bool(request.truncate))
        record = request_log.current()
        if record is not None:
            record.add_usage(result.prompt_tokens, 0)
        renormalize = embedder.normalized
    finally:
        lease.release()
    vectors = shorten(result.vectors, request.dimensions, renormalize=renormalize)
    return Embedded(vectors, result.prompt_tokens, loaded)


async def create_embedding(registry: Registry, request: EmbeddingRequest) -> dict[str, Any] | AsyncIterator[bytes]:
    """The response JSON, or for a large one its bytes in pieces (see `response_pieces`)."""
    done = await embed(registry, request)
    if done.vectors.size > STREAM_VALUES:
        return response_pieces(done.vectors, request.format, request.model, done.prompt_tokens)
    return response_body(done.vectors, request.format, request.model, done.prompt_tokens)
