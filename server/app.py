"""The app factory, its error handling and lifecycle, and `serve()` (Hypercorn).

`create_app(settings)` builds a fresh app; nothing lives in module globals, so
tests build their own (`async with app.test_app()` runs the lifecycle hooks).
Every error, whatever raised it (a request model, the registry, the engine,
Quart's routing, an unexpected bug), leaves as OpenAI's error JSON through
`ortserve.server.errors.error_body`.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from ortserve.server.errors import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    error_body,
)
from ortserve.server.registry import Loader, Registry
from ortserve.server.routes import EXTENSION, AppState, app_state, chat, completions, embeddings, health, models, ps
from ortserve.server.settings import ServerSettings
from ortserve.core.store import ModelStore

log = logging.getLogger(__name__)

Setup = Callable[[], Awaitable[Any]]  # work done while /health says "loading" (e.g. bootstrapping the store)

OPEN_PATHS = {"/health"}  # answered without an API key
# Browser pages served from this machine may call the API (as Ollama's default origins): a page on another
# site may not, so a site the user visits cannot drive the local models.
CORS_HOSTS = {"localhost", "127.0.0.1", "::1"}


def _error_response(exc: BaseException, headers: dict[str, str] | None = None):
    body, status = error_body(exc)
    return body, status, headers or {}


def _http_error(exc: HTTPException) -> APIError:
    """Quart/werkzeug's own HTTP errors (routing, body size, ...) as typed API errors."""
    where = f"{request.method} {request.path}"
    if exc.code == 404:
        return NotFoundError(f"Invalid URL ({where})")
    if exc.code == 413:
        limit = request.max_content_length
        return PayloadTooLargeError(f"The request body is too large (the limit is {limit} bytes).")
    if exc.code == 400:
        return InvalidRequestError(exc.description or "Bad request.")
    error = APIError(exc.description or exc.name)
    error.status = exc.code or 500
    if error.status < 500:
        error.type = "invalid_request_error"
    if exc.code == 405:
        error.message = f"Method {request.method} is not allowed for {request.path}."
        error.code = "method_not_allowed"
    return error


def _register_error_handlers(app: Quart) -> None:
    @app.errorhandler(APIError)
    async def api_error(exc: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error_response(exc, headers)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException):
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return _error_response(_http_error(exc), headers)

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(exc)


def _local_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.hostname in CORS_HOSTS
    except ValueError:  # e.g. a malformed port or IPv6 address
        return False


def _register_cors(app: Quart) -> None:
    """CORS for browser apps on this machine: their preflight (OPTIONS, sent without the API key) is
    answered, and every response to them, errors included, says that they may read it."""

    @app.after_request
    async def allow_local_origins(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if not origin or not _local_origin(origin):
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response.headers["Access-Control-Allow-Methods"] = response.headers.get("Allow", "")
            # the openai clients send headers of their own (x-stainless-*, openai-organization): allow what is asked
            asked = request.headers.get("Access-Control-Request-Headers", "")
            response.headers["Access-Control-Allow-Headers"] = asked
            response.headers["Access-Control-Max-Age"] = "600"
        return response


def _register_checks(app: Quart, settings: ServerSettings) -> None:
    @app.before_request
    async def authenticate() -> None:
        # a CORS preflight never carries the key; Quart answers OPTIONS itself, without running a route
        if not settings.api_key or request.path in OPEN_PATHS or request.method == "OPTIONS":
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not token or scheme.lower() != "bearer":
            raise AuthenticationError(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        if not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise AuthenticationError("Incorrect API key provided.")

    @app.before_request
    async def ready() -> None:
        state = app_state()
        if state.status == "ok" or request.path in OPEN_PATHS or request.routing_exception is not None:
            return
        if request.method == "OPTIONS":  # a CORS preflight: Quart answers it, no route runs
            return
        if state.status == "error":
            raise APIError(f"The server failed to start: {state.error}")
        raise OverloadedError("The server is still starting up; try again shortly.")


def _register_lifecycle(app: Quart, state: AppState, setup: Setup | None) -> None:
    tasks: set[asyncio.Task] = set()

    async def run_setup() -> None:
        try:
            await setup()  # type: ignore[misc]
        except Exception as exc:
            log.exception("server setup failed")
            state.status, state.error = "error", f"{type(exc).__name__}: {exc}"
        else:
            state.status = "ok"

    @app.before_serving
    async def startup() -> None:
        state.registry.start()  # the reaper that unloads idle models
        if setup is None:
            state.status = "ok"
        else:  # serve /health ("loading") while the setup runs
            state.status = "loading"
            task = asyncio.ensure_future(run_setup())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    @app.after_serving
    async def shutdown() -> None:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await state.registry.close()


def create_app(
    settings: ServerSettings,
    store: ModelStore | None = None,
    *,
    loader: Loader | None = None,
    loaders: dict[str, Loader] | None = None,
    setup: Setup | None = None,
) -> Quart:
    """A new app serving `store` (default: the one `settings` point at).

    `loader` replaces `ortserve.server.engine.load_generator` and `loaders` any task's model
    loader, e.g. {"embedding": ...} (tests); `setup` runs after
    startup while /health reports "loading" and other endpoints answer 503.
    """
    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    store = store or ModelStore(settings.models_dir)
    state = AppState(settings=settings, registry=Registry(settings, store, loader, loaders=loaders))
    app.extensions[EXTENSION] = state

    for module in (chat, completions, embeddings, models, ps, health):
        app.register_blueprint(module.bp)
    _register_error_handlers(app)
    _register_checks(app, settings)
    _register_cors(app)
    _register_lifecycle(app, state, setup)
    return app


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve(
    settings: ServerSettings,
    store: ModelStore,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    *,
    setup: Setup | None = None,
) -> None:
    """Serve until `shutdown_trigger` returns (default: SIGINT/SIGTERM). The CLI runs it with asyncio.run."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [_bind(settings.host, settings.port)]
    config.graceful_timeout = 5.0
    config.include_server_header = False
    app = create_app(settings, store, setup=setup)
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)
