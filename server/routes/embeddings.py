"""POST /v1/embeddings"""
from quart import Blueprint

from server.protocol import EmbeddingRequest, parse_request
from server.routes import registry, request_body
from server.serving import embeddings as serving

bp = Blueprint("embeddings", __name__)


@bp.post("/v1/embeddings")
async def create_embedding():
    body = parse_request(EmbeddingRequest, await request_body())
    return await serving.create_embedding(registry(), body)
