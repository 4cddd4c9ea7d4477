"""GET /v1/models and GET /v1/models/{model} (names may contain ':' and '/')."""

from quart import Blueprint

from ortserve.server.routes import registry
from ortserve.server.serving import models as serving

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
async def list_models():
    return (await serving.list_models(registry())).model_dump()


@bp.get("/v1/models/<path:model>")
async def retrieve_model(model: str):
    return (await serving.retrieve_model(registry(), model)).model_dump()
