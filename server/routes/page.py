"""GET /chat: a small chat page for a person (server/page/chat.html: no CDN, no build step). It uses only
the public /v1 API from its own origin, so the host/origin rules and the API key apply to it as to any
client; it is served without the key (it asks for one when the API answers 401)."""

from functools import cache
from importlib import resources

from quart import Blueprint, Response

bp = Blueprint("page", __name__)


@bp.get("/chat")
async def chat_page():
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-cache",
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'",
    }
    return Response(_page(), 200, headers)


@cache
def _page() -> str:
    return resources.files("ortserve.server").joinpath("page/chat.html").read_text(encoding="utf-8")
