"""POST /v1/completions"""

from quart import Blueprint

from ortserve.server.protocol import CompletionRequest, parse_request
from ortserve.server.routes import registry, request_body
from ortserve.server.serving import completions as serving
from ortserve.server.streaming import sse_response

bp = Blueprint("completions", __name__)


@bp.post("/v1/completions")
async def create_completion():
    body = parse_request(CompletionRequest, await request_body())
    result = await serving.create_completion(registry(), body)
    return await sse_response(result) if body.stream else result
