"""GET /api/ps: the loaded models, in Ollama's shape ({"models": [{"name", "model", "size", "size_vram",
"expires_at", "details", ...}]}) plus our `names`, `device`, `task`, `expires_in` (seconds; null: kept
forever), `context_length` and `requests` (in flight). Behind the same API key as /v1.

One row per loaded model: names that share weights (`cp`, `create` FROM, aliases) share one loaded model,
listed once under the name it was last used under, with all its names in `names`; a row per name would
count the same memory several times."""

from quart import Blueprint

from ortserve.server.routes import registry
from ortserve.server.serving import models as serving

bp = Blueprint("ps", __name__)


@bp.get("/api/ps")
async def list_running_models():
    return serving.list_running_models(registry()).model_dump()
