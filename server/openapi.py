"""The OpenAPI 3.1 document of every route the server answers (GET /openapi.json), generated from the
pydantic protocol models, so it cannot say something the validation does not do.

`OPERATIONS` is the one list of routes with their request and response models; tests/unit/test_openapi.py
checks that it names every route the app has (and nothing else) and that the document is valid OpenAPI.
Streamed answers (`stream: true`) are documented as `text/event-stream` whose events are the chunk model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ortserve.server import __version__
from ortserve.server.errors import error_shape
from ortserve.server.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
)
from ortserve.server.protocol.common import ErrorResponse, OllamaErrorResponse
from ortserve.server.protocol.ollama import OllamaChatRequest, OllamaGenerateRequest
from ortserve.server.protocol.ollama_models import (
    OllamaCopyRequest,
    OllamaCreateRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaModelRequest,
    OllamaPullRequest,
)
from ortserve.server.protocol.ps import ProcessList
from ortserve.server.protocol.response_objects import ResponseDeleted, ResponsesResponse, ResponseStreamEvent
from ortserve.server.protocol.responses import ResponsesRequest

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI's template: /v1/models/{model}, /v1/responses/{response_id}
    operation_id: str  # OpenAI's operation names
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    stream: type[BaseModel] | None = None  # the SSE event model when the request may ask `stream: true`
    content_type: str = "application/json"
    ndjson: bool = False  # Ollama's streams: one JSON object per line (`stream`, default true)


OPERATIONS = (
    Operation(
        "post",
        "/v1/chat/completions",
        "createChatCompletion",
        "Chat",
        ChatCompletionRequest,
        ChatCompletionResponse,
        ChatCompletionChunk,
    ),
    Operation(
        "post",
        "/v1/completions",
        "createCompletion",
        "Text completion",
        CompletionRequest,
        CompletionResponse,
        CompletionResponse,
    ),
    Operation(
        "post",
        "/v1/responses",
        "createResponse",
        "A response (OpenAI's Responses API)",
        ResponsesRequest,
        ResponsesResponse,
        ResponseStreamEvent,
    ),
    Operation("get", "/v1/responses/{response_id}", "getResponse", "A stored response", response=ResponsesResponse),
    Operation(
        "delete", "/v1/responses/{response_id}", "deleteResponse", "Delete a stored response", response=ResponseDeleted
    ),
    Operation("post", "/v1/embeddings", "createEmbedding", "Embeddings", EmbeddingRequest, EmbeddingResponse),
    Operation("get", "/v1/models", "listModels", "Every name and alias served", response=ModelList),
    Operation("get", "/v1/models/{model}", "retrieveModel", "One model's card", response=ModelCard),
    Operation("get", "/api/ps", "listRunningModels", "Loaded models (Ollama's shape)", response=ProcessList),
    Operation("get", "/health", "health", "Ready or not, loaded models and their devices"),
    Operation("get", "/metrics", "metrics", "Prometheus metrics", content_type="text/plain"),
    Operation("get", "/openapi.json", "openapi", "This document"),
    Operation("get", "/chat", "chatPage", "A chat page for a browser", content_type="text/html"),
    # Ollama's API (its answers are documented as objects; see the README's Ollama API table)
    Operation("get", "/", "ollamaRoot", "'ortserve is running'", content_type="text/plain"),
    Operation("get", "/api/version", "ollamaVersion", "The server's version"),
    Operation("post", "/api/chat", "ollamaChat", "Chat (Ollama)", OllamaChatRequest, ndjson=True),
    Operation("post", "/api/generate", "ollamaGenerate", "Generate (Ollama)", OllamaGenerateRequest, ndjson=True),
    Operation("post", "/api/embed", "ollamaEmbed", "Embeddings (Ollama)", OllamaEmbedRequest),
    Operation(
        "post", "/api/embeddings", "ollamaEmbeddings", "One embedding (Ollama's older route)", OllamaEmbeddingsRequest
    ),
    Operation("get", "/api/tags", "ollamaTags", "Models in the store (Ollama)"),
    Operation("post", "/api/show", "ollamaShow", "One model's details (Ollama)", OllamaModelRequest),
    Operation("post", "/api/copy", "ollamaCopy", "Copy a model (Ollama)", OllamaCopyRequest),
    Operation("delete", "/api/delete", "ollamaDelete", "Remove a model (Ollama)", OllamaModelRequest),
    Operation(
        "post", "/api/create", "ollamaCreate", "Create a model from another (Ollama)", OllamaCreateRequest, ndjson=True
    ),
    Operation("post", "/api/pull", "ollamaPull", "Pull a model (Ollama)", OllamaPullRequest, ndjson=True),
)


def document() -> dict[str, Any]:
    found: set[type[BaseModel]] = {m for op in OPERATIONS for m in (op.request, op.response, op.stream) if m}
    models = sorted(found | {ErrorResponse, OllamaErrorResponse}, key=lambda m: m.__name__)
    modes: tuple[Literal["validation", "serialization"], ...] = ("validation", "serialization")
    keyed = [(m, mode) for mode in modes for m in models]
    refs, defs = models_json_schema(keyed, ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    ref = {(m, mode): value["$ref"] for (m, mode), value in refs.items()}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ortserve",
            "version": __version__,
            "description": "A local OpenAI-compatible model server on ONNX Runtime.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],  # the key is asked only when the server sets one
    }


def _operation(op: Operation, ref: dict) -> dict[str, Any]:
    shape = OllamaErrorResponse if error_shape(op.path) == "ollama" else ErrorResponse
    error = {"application/json": {"schema": {"$ref": ref[(shape, "serialization")]}}}
    ok: dict[str, Any] = {"description": "OK"}
    if op.response is not None:
        ok["content"] = {op.content_type: {"schema": {"$ref": ref[(op.response, "serialization")]}}}
    else:
        ok["content"] = {
            op.content_type: {"schema": {"type": "object"} if op.content_type.endswith("json") else {"type": "string"}}
        }
    if op.ndjson:
        ok["content"]["application/x-ndjson"] = {
            "schema": {"type": "string", "description": "JSON objects, one a line"}
        }
    if op.stream is not None:
        events = (
            f"`event: TYPE` + `data: {{{op.stream.__name__}}}` events"
            if op.stream is ResponseStreamEvent
            else f"`data: {{{op.stream.__name__}}}` events, then `data: [DONE]`"
        )
        ok["content"]["text/event-stream"] = {"schema": {"type": "string", "description": events}}
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "responses": {"200": ok, "default": {"description": "An error", "content": error}},
    }
    if op.request is not None:
        body = {"$ref": ref[(op.request, "validation")]}
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    names = re.findall(r"{(\w+)}", op.path)
    if names:
        out["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    return out
