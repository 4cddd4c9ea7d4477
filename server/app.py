"""The app factory, its error handling and lifecycle, and `serve()` (Hypercorn).

`create_app(settings)` builds a fresh app; nothing lives in module globals, so
tests build their own (`async with app.test_app()` runs the lifecycle hooks).
Every error, whatever raised it (a request model, the registry, the engine,
Quart's routing, an unexpected bug), leaves as OpenAI's error JSON through
`ortserve.server.errors.error_body` (Ollama's shape on Ollama's routes, `/api/*`).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Quart, Response, current_app, request
from werkzeug.exceptions import HTTPException

from ortserve.core.durations import parse_duration
from ortserve.core.store import ModelStore
from ortserve.server import request_log
from ortserve.server.busy_gate import BusyGate
from ortserve.server.errors import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ShuttingDownError,
    body_timeout_error,
    error_body,
    error_shape,
)
from ortserve.server.host_rules import host_allowed, key_accepted, origin_allowed
from ortserve.server.loading import Loader
from ortserve.server.metrics import Metrics
from ortserve.server.registry import Registry
from ortserve.server.request_limit import RequestLimit
from ortserve.server.request_log import RequestLog
from ortserve.server.responses_store import ResponseStore
from ortserve.server.routes import (
    EXTENSION,
    AppState,
    app_state,
    chat,
    completions,
    embeddings,
    health,
    models,
    ollama,
    openapi,
    page,
    ps,
    responses,
)
from ortserve.server.routes import metrics as metrics_route
from ortserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

Setup = Callable[[], Awaitable[Any]]  # work done while /health says "loading" (e.g. bootstrapping the store)

OPEN_PATHS = {"/health", "/", "/openapi.json", "/chat"}  # answered without an API key


def _error_response(exc: BaseException, headers: dict[str, str] | None = None):
    body, status = error_body(exc, error_shape(request.path))
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
    if exc.code == 408:
        return body_timeout_error(current_app.config["BODY_TIMEOUT"])
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
        return _error_response(exc, dict(exc.headers))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException):
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return _error_response(_http_error(exc), headers)

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(exc)


def _register_cors(app: Quart, settings: ServerSettings) -> None:
    """CORS for the browser pages that may use the API (server/host_rules.py): their preflight (OPTIONS, sent
    without the API key) is answered, and every response to them, errors included, says that they may read it."""

    @app.after_request
    async def allow_local_origins(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if not origin or not origin_allowed(origin, settings.allowed_origins):
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
    async def check_host_and_origin() -> None:
        """Before anything else (the body is not read yet): DNS rebinding and cross-site pages are refused."""
        if not host_allowed(request.headers.get("Host"), settings.host, settings.allowed_hosts):
            raise PermissionDeniedError(
                f"The Host '{request.headers.get('Host')}' is not this server's. If you expose the server under "
                "this name on purpose, add it to allowed_hosts (ORTSERVE_ALLOWED_HOSTS)."
            )
        if not origin_allowed(request.headers.get("Origin"), settings.allowed_origins):
            raise PermissionDeniedError(
                f"Requests from the web page origin '{request.headers.get('Origin')}' are not allowed. To let that "
                "site use this server, add it to allowed_origins (ORTSERVE_ALLOWED_ORIGINS)."
            )

    @app.before_request
    async def name_the_route() -> None:
        """The route's rule for the request log and metrics (a label with few values; not the raw path)."""
        record = request_log.current()
        if record is not None and request.url_rule is not None:
            record.route = request.url_rule.rule

    @app.before_request
    async def authenticate() -> None:
        # a CORS preflight never carries the key; Quart answers OPTIONS itself, without running a route
        open_paths = OPEN_PATHS | ({"/metrics"} if settings.metrics_open else set())
        if not settings.api_key or request.path in open_paths or request.method == "OPTIONS":
            return
        authorization = request.headers.get("Authorization", "")
        if key_accepted(authorization, settings.api_key):
            return
        scheme, _, token = authorization.partition(" ")
        if not token or scheme.lower() != "bearer":
            raise AuthenticationError(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
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
        if state.status == "stopping":
            raise ShuttingDownError("The server is shutting down; try again once it is back.")
        raise OverloadedError("The server is still starting up; try again shortly.")


def _register_lifecycle(app: Quart, state: AppState, setup: Setup | None) -> None:
    tasks: set[asyncio.Task] = set()

    async def run_setup(setup: Setup) -> None:
        try:
            await setup()
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
            task = asyncio.ensure_future(run_setup(setup))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    @app.after_serving
    async def shutdown() -> None:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await state.registry.close()
        await state.responses.close()


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
    app.config["BODY_TIMEOUT"] = settings.body_timeout  # Quart answers a body that takes longer with a 408
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    store = store or ModelStore(settings.models_dir)
    registry = Registry(settings, store, loader, loaders=loaders)
    metrics = Metrics(registry.running, settings.num_parallel)
    stored = ResponseStore(
        settings.responses_path,
        ttl=parse_duration(settings.responses_ttl),
        max_count=settings.responses_max_count,
        max_bytes=settings.responses_max_bytes,
    )
    state = AppState(settings=settings, registry=registry, metrics=metrics, responses=stored)
    app.extensions[EXTENSION] = state

    for module in (chat, completions, embeddings, responses, models, ps, ollama, health, metrics_route, openapi, page):
        app.register_blueprint(module.bp)
    _register_error_handlers(app)
    _register_checks(app, settings)
    _register_cors(app, settings)
    _register_lifecycle(app, state, setup)
    gated = BusyGate(app.asgi_app, state)  # a model's full queue refuses a flood before Quart parses it
    limited = RequestLimit(gated, settings.max_requests)
    # outermost: every request gets an id and a log line, those the limit refuses too
    app.asgi_app = RequestLog(limited, as_json=settings.log_format == "json", done=metrics.observe)  # type: ignore[assignment,method-assign]
    return app


def _loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve(
    settings: ServerSettings,
    store: ModelStore,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    *,
    setup: Setup | None = None,
) -> None:
    """Serve until `shutdown_trigger` returns (default: SIGINT/SIGTERM), then drain (server/shutdown.py). The CLI
    runs it with asyncio.run."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from ortserve.server.shutdown import Drain

    if not settings.api_key and not _loopback(settings.host):
        log.warning(
            "SERVING ON %s WITHOUT AN API KEY: anyone who can reach this address can use every model and change "
            "the store. Set api_key (ORTSERVE_API_KEY) or bind to 127.0.0.1.",
            settings.host,
        )
    config = Config()
    config.bind = [_bind(settings.host, settings.port)]
    # our grace ends what still runs with an error event; Hypercorn's own cut comes only after that
    config.graceful_timeout = settings.shutdown_grace + 5.0
    config.include_server_header = False
    config.backlog = 2048  # a burst of connections waits to be accepted instead of being reset (default 100)
    app = create_app(settings, store, setup=setup)
    drain = Drain(app.extensions[EXTENSION], settings.shutdown_grace, shutdown_trigger)
    # what was loaded to get here stays for good: a flood's garbage collections then scan only what requests made
    # (a thousand chats at once set off full collections of 0.1-0.4 s each, with everything the loop waiting)
    gc.collect()
    gc.freeze()
    await hypercorn_serve(app, config, shutdown_trigger=drain)
