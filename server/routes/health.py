"""GET /health: 200 {"status": "ok"} once the server is ready; 503 while it is loading (or failed).

The body also names the loaded models and the device each one runs on (`devices`: name -> "cpu",
"cuda", ...), which `ortserve info --url` reads; names that share one loaded model are each listed.
"""

from quart import Blueprint

from ortserve.server.routes import app_state

bp = Blueprint("health", __name__)


@bp.get("/health")
async def health():
    state = app_state()
    body = {
        "status": state.status,
        "models_loaded": state.registry.loaded(),
        "devices": {name: model.device for model in state.registry.running() for name in model.names},
    }
    if state.error:
        body["error"] = state.error
    return body, 200 if state.status == "ok" else 503
