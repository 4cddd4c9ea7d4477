"""GET /metrics: Prometheus' text format (server/metrics.py); behind the API key unless `metrics_open`."""

from quart import Blueprint, Response

from ortserve.server.metrics import CONTENT_TYPE
from ortserve.server.routes import app_state

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
async def get_metrics():
    return Response(app_state().metrics.render(), 200, {"Content-Type": CONTENT_TYPE})
