"""POST /v1/responses, GET /v1/responses/{response_id}, DELETE /v1/responses/{response_id} (OpenAI's Responses API)."""

from quart import Blueprint, request

from ortserve.server.errors import NotSupportedError
from ortserve.server.protocol import parse_request
from ortserve.server.protocol.responses import ResponsesRequest
from ortserve.server.routes import app_state, registry, request_body
from ortserve.server.serving import responses as serving
from ortserve.server.streaming import named_sse_response

bp = Blueprint("responses", __name__)


@bp.post("/v1/responses")
async def create_response():
    body = parse_request(ResponsesRequest, await request_body())
    result = await serving.create_response(registry(), app_state().responses, body)
    return await named_sse_response(result) if body.stream else result


@bp.get("/v1/responses/<response_id>")
async def retrieve_response(response_id: str):
    if request.args.get("stream", "false").lower() != "false":
        raise NotSupportedError("Streaming a stored response again is not supported.", param="stream")
    return await serving.retrieve_response(app_state().responses, response_id)


@bp.delete("/v1/responses/<response_id>")
async def delete_response(response_id: str):
    return await serving.delete_response(app_state().responses, response_id)
