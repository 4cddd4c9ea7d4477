"""Typed API errors and the one mapper to the error JSON: OpenAI's shape, or Ollama's on its routes.

Every error the server sends, as a response body or as an event inside a
stream, comes from `error_body()`, so both are the same. OpenAI's shape is
`{"error": {"message", "type", "param", "code"}}`; Ollama's (on `/api/*` and `/`)
is `{"error": "message"}` with the same HTTP status.
"""

from __future__ import annotations

from typing import Any, Literal


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    headers: dict[str, str] = {}  # HTTP headers the error's response carries (never changed in place)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    headers = {"WWW-Authenticate": "Bearer"}


class NotFoundError(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str, param: str | None = "model"):
        super().__init__(f"The model '{model}' does not exist", param=param)


class PermissionDeniedError(APIError):
    """A request this server refuses to serve whatever its body: a foreign Host or browser Origin."""

    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class RequestTimeoutError(APIError):
    """The request body did not arrive in time (body_timeout)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


def body_timeout_error(seconds: float) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"The request body did not arrive within {seconds:g} seconds (body_timeout); send it at once, as "
        "Content-Length says."
    )


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class NotSupportedError(APIError):
    status = 501
    type = "invalid_request_error"
    code = "not_supported"


class OverloadedError(APIError):
    status = 503
    type = "server_error"
    code = "overloaded"


class ServerBusyError(OverloadedError):
    """A model's queue is full (max_queue): try again in a moment, as Retry-After says."""

    code = "server_busy"
    headers = {"Retry-After": "2"}


class ShuttingDownError(OverloadedError):
    """The server is stopping: new requests, and those still running when the shutdown grace ran out."""

    code = "server_shutting_down"


class BackendError(APIError):
    """The model runner failed (crashed, ran out of memory, raised inside onnxruntime)."""

    status = 500
    type = "server_error"
    code = "backend_error"


ErrorShape = Literal["openai", "ollama"]


def error_body(exc: BaseException, shape: ErrorShape = "openai") -> tuple[dict[str, Any], int]:
    """Map any exception to (error JSON in `shape`, HTTP status)."""
    if not isinstance(exc, APIError):
        exc = APIError(f"Internal server error: {type(exc).__name__}: {exc}")
    if shape == "ollama":
        return {"error": exc.message}, exc.status
    body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
    return body, exc.status


def error_shape(path: str) -> ErrorShape:
    """Which error JSON a route answers with: Ollama's native API (`/api/*`, `/`) uses Ollama's."""
    return "ollama" if path == "/" or path.startswith("/api/") else "openai"


class ImageError(InvalidRequestError):
    """An image content part that cannot be used: a refused or failed URL, too large, not a supported image.

    A 400 (the request body itself was within `max_request_bytes`; its 413 is for that) whose `code`
    says which: invalid_image, image_too_large, image_url_refused, image_fetch_failed, image_fetch_timeout.
    """

    code = "invalid_image"
