"""The OpenAI protocol as pure pydantic models (no Quart, no ONNX Runtime)."""

from ortserve.server.protocol.chat import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    DeltaMessage,
)
from ortserve.server.protocol.common import SamplingRequest, StreamOptions, Usage, parse_request
from ortserve.server.protocol.completions import CompletionChoice, CompletionRequest, CompletionResponse
from ortserve.server.protocol.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from ortserve.server.protocol.models import ModelCard, ModelList

__all__ = [
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "DeltaMessage",
    "Embedding",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingUsage",
    "ModelCard",
    "ModelList",
    "SamplingRequest",
    "StreamOptions",
    "Usage",
    "parse_request",
]
