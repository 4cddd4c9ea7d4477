"""POST /v1/embeddings"""

from quart import Blueprint, make_response

from ortserve.server.protocol import EmbeddingRequest, parse_request
from ortserve.server.routes import registry, request_body
from ortserve.server.serving import embeddings as serving

bp = Blueprint("embeddings", __name__)


@bp.post("/v1/embeddings")
async def create_embedding():
    body = parse_request(EmbeddingRequest, await request_body())
    result = await serving.create_embedding(registry(), body)
    if isinstance(result, dict):
        return result
    response = await make_response(result, 200, {"Content-Type": "application/json"})  # a large body, in pieces
    response.timeout = None
    return response
