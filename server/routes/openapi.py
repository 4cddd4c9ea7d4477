"""GET /openapi.json: the API's OpenAPI 3.1 document (server/openapi.py), built once per app."""

from functools import cache

from quart import Blueprint

from ortserve.server.openapi import document

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
async def get_openapi():
    return _document()


@cache
def _document() -> dict:
    return document()
