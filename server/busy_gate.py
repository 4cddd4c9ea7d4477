"""Refusing a flood before the app: a request for a model whose queue is full gets its 503 below Quart.

A thousand chats sent at once used to go, each of them, through Quart's request context, the checks,
the route, the body's validation and the registry before the 484 past `max_queue` were refused; that
work, interleaved on the one event loop, held every other request (a `/health`, a small embedding) up
for about a second. `BusyGate` wraps the app (ASGI): for a POST to a route whose body names a model
(`MODEL_ROUTES`), it reads the body (a small one: at most `PEEK_BYTES`; a larger one goes on unread), reads
only its `"model"`, and asks the registry whether that model's queue is full (`Registry.busy`, no store
read, no waiting). If it is, the request is answered at once with the same 503 `server_busy`, in the
route's error shape, with Retry-After; otherwise the app gets the body as it came.

The gate refuses only what the app would refuse the same way: a request the app answers otherwise (a
foreign Host or Origin, a missing API key, a server not ready, a body that is not a JSON object with a
string `model`, a name the registry cannot tell about without the store) passes on untouched, and the
app decides. A body that does not arrive within `body_timeout` is a 408 here, as in the app.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ortserve.server import request_log
from ortserve.server.errors import APIError, body_timeout_error, error_body, error_shape
from ortserve.server.host_rules import host_allowed, key_accepted, origin_allowed
from ortserve.server.routes import AppState

# the routes whose body names a model, and the task that model must have
MODEL_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "chat",
    "/api/chat": "chat",
    "/api/generate": "chat",
    "/v1/embeddings": "embedding",
    "/api/embed": "embedding",
    "/api/embeddings": "embedding",
}
PEEK_BYTES = 64 * 1024  # larger bodies go to the app unread: a flood is many small requests


class BusyGate:
    def __init__(self, app: Any, state: AppState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        task = MODEL_ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        headers = dict(scope.get("headers") or []) if task else {}
        if task is None or scope.get("method") != "POST" or not self._may_refuse(headers):
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.state.settings.body_timeout):
                chunks, complete = await _read_body(receive)
        except TimeoutError:
            await _answer(send, scope["path"], headers, body_timeout_error(self.state.settings.body_timeout))
            return
        if chunks is None:  # the client left
            return
        model = _model_of(b"".join(chunks)) if complete else None
        error = None if model is None else self.state.registry.busy(model, task)
        if error is None:
            await self.app(scope, _replay(chunks, complete, receive), send)
            return
        record = request_log.current()
        if record is not None:
            record.route, record.model = scope["path"], model
        await _answer(send, scope["path"], headers, error)

    def _may_refuse(self, headers: dict[bytes, bytes]) -> bool:
        """Whether the app would get as far as the model's queue: ready, and the request passes the checks."""
        settings = self.state.settings
        if self.state.status != "ok":
            return False
        try:  # without a Content-Length (a chunked body) the first PEEK_BYTES are read, then the app reads on
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return False
        if length > min(PEEK_BYTES, settings.max_request_bytes):
            return False
        host, origin, key = (headers.get(name) for name in (b"host", b"origin", b"authorization"))
        return (
            host_allowed(None if host is None else host.decode("latin-1"), settings.host, settings.allowed_hosts)
            and origin_allowed(None if origin is None else origin.decode("latin-1"), settings.allowed_origins)
            and key_accepted(None if key is None else key.decode("latin-1"), settings.api_key)
        )


async def _read_body(receive: Any) -> tuple[list[bytes] | None, bool]:
    """The body's chunks up to PEEK_BYTES, and whether that is the whole body (None: the client left)."""
    chunks: list[bytes] = []
    size = 0
    while size <= PEEK_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, False
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False):
            return chunks, True
    return chunks, False


def _model_of(body: bytes) -> str | None:
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None
    model = decoded.get("model") if isinstance(decoded, dict) else None
    return model if isinstance(model, str) else None


def _replay(chunks: list[bytes], complete: bool, receive: Any) -> Any:
    """`receive` for the app: the chunks already read, then whatever comes next (the rest, a disconnect)."""
    waiting = [
        {"type": "http.request", "body": chunk, "more_body": not complete or i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def replay() -> dict:
        return waiting.pop(0) if waiting else await receive()

    return replay


async def _answer(send: Any, path: str, headers: dict[bytes, bytes], error: APIError) -> None:
    """`error` as the app would answer it: the route's error shape, the error's headers, CORS for an allowed
    page (the caller checked the Origin)."""
    body, status = error_body(error, error_shape(path))
    payload = json.dumps(body).encode()
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    out += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if b"origin" in headers:
        out += [(b"access-control-allow-origin", headers[b"origin"]), (b"vary", b"Origin")]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": payload})
