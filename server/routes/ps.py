"""GET /api/ps: the loaded models, in Ollama's shape ({"models": [{"name", "model", "size", "size_vram",
"expires_at", "details", ...}]}) plus our `device`, `task`, `expires_in` (seconds; null: kept forever),
`context_length` and `requests` (in flight). Behind the same API key as /v1."""
from quart import Blueprint

from ortserve.server.protocol.ps import ProcessList, RunningModel
from ortserve.server.routes import registry

bp = Blueprint("ps", __name__)


@bp.get("/api/ps")
async def list_running_models():
    return ProcessList(models=[RunningModel.of(m) for m in registry().running()]).model_dump()
