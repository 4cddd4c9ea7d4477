"""One record per HTTP request: its id, route, model, tokens and timings; the access-log line; `x-request-id`.

`RequestLog` wraps the app (ASGI, outside every route): it gives each request an id (the client's
`x-request-id` when it sends a sane one, else a new one), returns it as the `x-request-id` response header,
and, when the response is done, writes one access-log line and hands the record to the metrics. The
serving layer fills in what only it knows through `current()`: the model, the token counts and when the
first token came (a context variable, so every task a request starts sees its own record).

The line is `METHOD PATH STATUS model=... prompt_tokens=... completion_tokens=... ttft=...s total=...s
id=...` at INFO, or the same fields as one JSON object per line with `log_format = "json"`. Prompts and
outputs are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ortserve.access")

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what a client's id may be (it lands in logs and headers)


@dataclass
class RequestRecord:
    id: str
    method: str
    path: str
    route: str = "unmatched"  # the route's rule (a label with few values), set once routing matched
    status: int = 0
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    ended: float | None = None

    def token_arrived(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def add_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def total(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def fields(self) -> dict[str, Any]:
        ttft = self.ttft
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_s": None if ttft is None else round(ttft, 4),
            "total_s": round(self.total, 4),
            "id": self.id,
        }


_record: ContextVar[RequestRecord | None] = ContextVar("ortserve_request", default=None)


def current() -> RequestRecord | None:
    """The record of the request being served (None outside one, e.g. in tests that call serving directly)."""
    return _record.get()


def line(record: RequestRecord, as_json: bool) -> str:
    f = record.fields()
    if as_json:
        return json.dumps(f, separators=(",", ":"))
    ttft = "-" if f["ttft_s"] is None else f"{f['ttft_s']}s"
    return (
        f"{f['method']} {f['path']} {f['status']} model={f['model'] or '-'} prompt_tokens={f['prompt_tokens']} "
        f"completion_tokens={f['completion_tokens']} ttft={ttft} total={f['total_s']}s id={f['id']}"
    )


class RequestLog:
    """The ASGI wrapper: ids, the access log, and `done(record)` (the metrics) for each HTTP request."""

    def __init__(self, app: Any, *, as_json: bool, done: Callable[[RequestRecord], None]):
        self.app, self.as_json, self.done = app, as_json, done

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        record = RequestRecord(
            id=given if _SANE_ID.match(given) else f"req-{uuid.uuid4().hex}",
            method=scope.get("method", ""),
            path=scope.get("path", ""),
        )
        token = _record.set(record)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", record.id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _record.reset(token)
            record.ended = time.monotonic()
            if not record.status:  # the client left before any answer
                record.status = 499
            log.info("%s", line(record, self.as_json))
            self.done(record)
