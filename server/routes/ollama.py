"""Ollama's native API (`/api/*`, and `/` answering that the server runs): one Blueprint, thin routes.

Errors on these routes are Ollama's `{"error": "..."}` (app.py picks the shape by the path); streams are
NDJSON. GET /api/ps lives in routes/ps.py.
"""

from quart import Blueprint

from ortserve.server import __version__
from ortserve.server.protocol import parse_request
from ortserve.server.protocol.ollama import OllamaChatRequest, OllamaGenerateRequest
from ortserve.server.protocol.ollama_models import (
    OllamaCopyRequest,
    OllamaCreateRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaModelRequest,
    OllamaPullRequest,
)
from ortserve.server.routes import registry, request_body
from ortserve.server.serving import ollama_chat, ollama_models
from ortserve.server.streaming import ndjson_response

bp = Blueprint("ollama", __name__)


async def _answer(result):
    return result if isinstance(result, dict) else await ndjson_response(result)


@bp.route("/", methods=["GET", "HEAD"])
async def root():
    return "ortserve is running", 200, {"Content-Type": "text/plain; charset=utf-8"}


@bp.get("/api/version")
async def version():
    return {"version": __version__}


@bp.post("/api/chat")
async def chat():
    body = parse_request(OllamaChatRequest, await request_body())
    return await _answer(await ollama_chat.chat(registry(), body))


@bp.post("/api/generate")
async def generate():
    body = parse_request(OllamaGenerateRequest, await request_body())
    return await _answer(await ollama_chat.generate(registry(), body))


@bp.post("/api/embed")
async def embed():
    body = parse_request(OllamaEmbedRequest, await request_body())
    return await ollama_models.embed(registry(), body)


@bp.post("/api/embeddings")
async def embeddings():
    body = parse_request(OllamaEmbeddingsRequest, await request_body())
    return await ollama_models.embeddings(registry(), body)


@bp.get("/api/tags")
async def list_tags():
    return await ollama_models.list_tags(registry())


@bp.post("/api/show")
async def show():
    body = parse_request(OllamaModelRequest, await request_body())
    return await ollama_models.show(registry(), body)


@bp.post("/api/copy")
async def copy():
    body = parse_request(OllamaCopyRequest, await request_body())
    await ollama_models.copy(registry(), body)
    return "", 200


@bp.delete("/api/delete")
async def delete():
    body = parse_request(OllamaModelRequest, await request_body())
    await ollama_models.delete(registry(), body)
    return "", 200


@bp.post("/api/create")
async def create():
    body = parse_request(OllamaCreateRequest, await request_body())
    return await _answer(await ollama_models.create(registry(), body))


@bp.post("/api/pull")
async def pull():
    parse_request(OllamaPullRequest, await request_body())
    ollama_models.pull()
