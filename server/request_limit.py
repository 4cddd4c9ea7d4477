"""A bound on HTTP requests in flight across the whole server, below the app (an ASGI wrapper).

Each model bounds its own queue (`max_queue`), but a flood spread over routes and names, or requests that
hold a connection before they name a model, would still pile up coroutines and buffers without limit.
Past `max_requests` in flight, a request is answered at once with a 503 `server_busy` and Retry-After,
before its body is read or any route runs.
"""

from __future__ import annotations

import json
from typing import Any

from ortserve.server.errors import ServerBusyError, error_body, error_shape


class RequestLimit:
    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await self._refuse(send, scope.get("path", ""))
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _refuse(self, send: Any, path: str) -> None:
        error = ServerBusyError(f"The server has {self.active} requests in flight (max_requests); try again shortly.")
        body, status = error_body(error, error_shape(path))  # the route's shape, as every other error
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
