"""GET /v1/models and GET /v1/models/{model} (names may contain ':' and '/')."""
from quart import Blueprint

from ortserve.server.protocol import ModelList
from ortserve.server.routes import registry

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
async def list_models():
    return ModelList(data=await registry().cards()).model_dump()


@bp.get("/v1/models/<path:model>")
async def retrieve_model(model: str):
    return (await registry().card(model)).model_dump()
