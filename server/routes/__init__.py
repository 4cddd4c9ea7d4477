"""HTTP routes: one Blueprint per endpoint, each thin (parse, call one service, encode).

What the routes share lives here: the per-app state (on `app.extensions`, never
in a module global) and reading a JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from quart import current_app, request

from ortserve.server.metrics import Metrics
from ortserve.server.registry import Registry
from ortserve.server.responses_store import ResponseStore
from ortserve.server.settings import ServerSettings

EXTENSION = "ortserve"


@dataclass(eq=False)
class AppState:
    settings: ServerSettings
    registry: Registry
    metrics: Metrics
    responses: ResponseStore  # stored responses of /v1/responses
    status: Literal["loading", "ok", "error", "stopping"] = "loading"
    error: str | None = None  # why setup failed, when status == "error"


def app_state() -> AppState:
    return current_app.extensions[EXTENSION]


def registry() -> Registry:
    return app_state().registry


async def request_body() -> bytes:
    """The raw body; too large a body raises 413 here (MAX_CONTENT_LENGTH)."""
    return cast(bytes, await request.get_data(cache=False, as_text=False))  # as_text=False: always bytes
