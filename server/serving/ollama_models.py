"""Ollama's model API over the store and the registry: /api/tags, /api/show, /api/copy, /api/delete,
/api/create, /api/pull (refused: there is no download over the API), /api/embed and /api/embeddings.

Listings are Ollama's JSON (`details`, `capabilities`, a Modelfile as the settings would be written);
`digest` is a stable id of the weights and settings (ortserve has no blobs); sizes are the weights' bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from ortserve.core.model_config import ModelConfig
from ortserve.core.store import ModelEntry, StoreError, check_name, weights_size
from ortserve.server.chat.templates import chat_profile
from ortserve.server.errors import InvalidRequestError, ModelNotFoundError, NotSupportedError
from ortserve.server.modelfile import IGNORED_PARAMETERS, PARAMETERS, UNSUPPORTED_PARAMETERS, Modelfile
from ortserve.server.protocol.common import parse_request
from ortserve.server.protocol.embeddings import EmbeddingRequest
from ortserve.server.protocol.ollama_models import (
    OllamaCopyRequest,
    OllamaCreateRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaModelRequest,
)
from ortserve.server.registry import Registry
from ortserve.server.serving import embeddings as embeddings_serving
from ortserve.server.serving.chat_plan import accepts_images

# our SamplingDefaults field -> Ollama's PARAMETER name (the Modelfile's, read backwards)
_PARAMETER_NAMES = {ours: theirs for theirs, (ours, _) in PARAMETERS.items()}


def _modified_at(entry: ModelEntry) -> str:
    return datetime.fromtimestamp(entry.created, UTC).isoformat(timespec="seconds")


def _digest(entry: ModelEntry) -> str:
    key = f"{entry.folder.name}:{entry.manifest.get('created')}:{entry.config.model_dump_json()}"
    return hashlib.sha256(key.encode()).hexdigest()


def _details(entry: ModelEntry) -> dict[str, Any]:
    manifest = entry.manifest
    family = manifest.get("model_type") or manifest.get("family") or ""
    return {
        "parent_model": entry.config.weights or "",
        "format": "onnx",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": "",
        "quantization_level": manifest.get("precision") or "",
    }


def _tag(name: str, entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _modified_at(entry),
        "size": weights_size(entry.folder),
        "digest": _digest(entry),
        "details": _details(entry),
    }


async def list_tags(registry: Registry) -> dict[str, Any]:
    served = await registry.served_names()
    return {"models": await asyncio.to_thread(lambda: [_tag(s.name, s.entry) for s in served])}


def _capabilities(entry: ModelEntry) -> list[str]:
    if entry.task == "embedding":
        return ["embedding"]
    profile = chat_profile(entry.folder, entry.manifest)
    found = ["completion"]
    if accepts_images(entry):
        found.append("vision")
    if profile.template and "tools" in profile.template:
        found.append("tools")
    if profile.reasoning is not None:
        found.append("thinking")
    return found


def _quoted(value: str) -> str:
    return f'"""{value}"""' if "\n" in value or '"' in value else f'"{value}"'


def _parameters(config: ModelConfig) -> list[str]:
    lines = [f"num_ctx {config.num_ctx}"] if config.num_ctx else []
    for field, value in config.defaults.model_dump(exclude_none=True).items():
        if field == "stop":
            lines.extend(f"stop {_quoted(v)}" for v in value)
        else:
            lines.append(f"{_PARAMETER_NAMES.get(field, field)} {value}")
    return lines


def _context_length(entry: ModelEntry) -> int | None:
    return entry.config.num_ctx or entry.manifest.get("context_length")


async def show(registry: Registry, request: OllamaModelRequest) -> dict[str, Any]:
    entry = await registry.resolve(request.model)
    profile = await asyncio.to_thread(chat_profile, entry.folder, entry.manifest) if entry.task == "chat" else None
    parameters = _parameters(entry.config)
    modelfile = [f"FROM {entry.config.weights or entry.name}", *(f"PARAMETER {p}" for p in parameters)]
    if entry.config.system:
        modelfile.append(f"SYSTEM {_quoted(entry.config.system)}")
    architecture = entry.manifest.get("model_type") or entry.manifest.get("architecture") or ""
    info: dict[str, Any] = {"general.architecture": architecture}
    if _context_length(entry):
        info[f"{architecture}.context_length"] = _context_length(entry)
    body: dict[str, Any] = {
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": "\n".join(parameters),
        "template": (profile.template or "") if profile else "",
        "details": _details(entry),
        "model_info": info,
        "capabilities": await asyncio.to_thread(_capabilities, entry),
        "modified_at": _modified_at(entry),
    }
    if entry.config.system:
        body["system"] = entry.config.system
    return body


def _store_error(exc: StoreError, param: str) -> InvalidRequestError:
    return InvalidRequestError(str(exc), param=param)


async def copy(registry: Registry, request: OllamaCopyRequest) -> None:
    await registry.resolve(request.source, param="source")
    try:
        await asyncio.to_thread(registry.store.copy, request.source, request.destination)
    except StoreError as exc:
        raise _store_error(exc, "destination") from None


async def delete(registry: Registry, request: OllamaModelRequest) -> None:
    if not await asyncio.to_thread(registry.store.exists, request.model):
        raise ModelNotFoundError(request.model)
    try:
        await asyncio.to_thread(registry.store.remove, request.model)
    except StoreError as exc:
        raise _store_error(exc, "model") from None


def _modelfile(request: OllamaCreateRequest) -> Modelfile:
    """The request's system and parameters as the Modelfile they would be (the same checks as `create`)."""
    modelfile = Modelfile(source=request.from_ or "", system=request.system)
    for name, value in (request.parameters or {}).items():
        key = name.lower()
        if key in UNSUPPORTED_PARAMETERS:
            raise InvalidRequestError(f"The parameter '{name}' is not supported by ortserve.", param="parameters")
        if key in IGNORED_PARAMETERS:
            continue
        if key not in PARAMETERS:
            raise InvalidRequestError(f"Unknown parameter '{name}'.", param="parameters")
        field, convert = PARAMETERS[key]
        values = value if isinstance(value, list) else [value]
        try:
            converted = [convert(str(v)) for v in values]
        except ValueError as exc:
            raise InvalidRequestError(f"Invalid value for parameter '{name}': {exc}.", param="parameters") from None
        if field == "num_ctx":
            modelfile.num_ctx = converted[-1]
        else:
            modelfile.defaults[field] = converted if field == "stop" else converted[-1]
    return modelfile


def _create(registry: Registry, request: OllamaCreateRequest, modelfile: Modelfile, base: ModelEntry) -> None:
    store, name = registry.store, check_name(request.model)
    store.check_not_an_alias(name)
    weights = base.config.weights or base.name
    existing = store.get(name) if store.exists(name) else None
    if existing is not None and not existing.config.weights and weights != name:
        raise StoreError(f"model '{name}' has weights of its own; delete it first")
    try:
        config = modelfile.to_config(base.config, None if weights == name else weights)
    except ValueError as exc:
        raise StoreError(f"invalid parameters: {exc}") from None
    if name == base.name:  # new settings for the same name: its aliases stay its own
        config = config.model_copy(update={"aliases": base.config.aliases})
    store.write_config(name, config)


async def create(registry: Registry, request: OllamaCreateRequest) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
    base = await registry.resolve(request.from_ or "", param="from")
    modelfile = _modelfile(request)
    try:
        await asyncio.to_thread(_create, registry, request, modelfile, base)
    except StoreError as exc:
        raise _store_error(exc, "model") from None
    if request.stream is False:
        return {"status": "success"}

    async def statuses() -> AsyncIterator[dict[str, Any]]:
        yield {"status": f"using the weights of '{base.name}'"}
        yield {"status": "writing settings"}
        yield {"status": "success"}

    return statuses()


def pull() -> None:
    raise NotSupportedError(
        "Pulling models over the API is not supported: on the server's command line, convert the model "
        "with `ortserve convert <hub id or folder>` (or `ortserve pull` where your version has it)."
    )


async def embed(registry: Registry, request: OllamaEmbedRequest) -> dict[str, Any]:
    start = time.monotonic_ns()
    done = await embeddings_serving.embed(registry, parse_request(EmbeddingRequest, request.to_openai()))
    return {
        "model": request.model,
        "embeddings": done.vectors.tolist(),
        "total_duration": time.monotonic_ns() - start,
        "load_duration": done.loaded_ns - start,
        "prompt_eval_count": done.prompt_tokens,
    }


async def embeddings(registry: Registry, request: OllamaEmbeddingsRequest) -> dict[str, Any]:
    """The older endpoint: an empty prompt gives an empty embedding (after loading the model), as Ollama."""
    if not request.prompt:
        lease = await registry.acquire(request.model, task="embedding", keep_alive=request.keep_alive)
        lease.release()
        return {"embedding": []}
    body = await embed(
        registry, OllamaEmbedRequest(model=request.model, input=request.prompt, keep_alive=request.keep_alive)
    )
    return {"embedding": body["embeddings"][0]}
