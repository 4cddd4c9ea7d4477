"""GET /health: 200 {"status": "ok"} once the server is ready; 503 while it is loading (or failed)."""
from quart import Blueprint

from server.routes import app_state

bp = Blueprint("health", __name__)


@bp.get("/health")
async def health():
    state = app_state()
    body = {"status": state.status, "models_loaded": state.registry.loaded()}
    if state.error:
        body["error"] = state.error
    return body, 200 if state.status == "ok" else 503
