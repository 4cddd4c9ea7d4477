"""POST /v1/chat/completions"""

from quart import Blueprint

from ortserve.server.protocol import ChatCompletionRequest, parse_request
from ortserve.server.routes import registry, request_body
from ortserve.server.serving import chat as serving
from ortserve.server.streaming import sse_response

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
async def create_chat_completion():
    body = parse_request(ChatCompletionRequest, await request_body())
    result = await serving.create_chat_completion(registry(), body)
    return await sse_response(result) if body.stream else result
