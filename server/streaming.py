"""Server-sent events: OpenAI's streaming wire format (named events for the Responses API:
`named_sse_response`; Ollama's NDJSON: `ndjson_response`).

Each payload is one `data: {json}` event; a stream ends with `data: [DONE]`. An
error after the stream has started cannot change the HTTP status any more, so it
is sent as one `data: {"error": {...}}` event (the same JSON `error_body` gives a
normal response), then `[DONE]` ends the stream (as vLLM does).

A client that disconnects cancels the task sending the response: the payload
iterator is closed, and closing it stops the generation behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from quart import Response

from ortserve.server.errors import APIError, error_body

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # reverse proxies: do not buffer the stream
}


def sse_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def sse_events(payloads: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Encode payloads as SSE, then [DONE]; an error becomes an error event, then [DONE]."""
    try:
        async for payload in payloads:
            yield sse_event(payload)
    except Exception as exc:  # CancelledError (the client left) is not an Exception: it propagates
        if not isinstance(exc, APIError):
            log.exception("error inside a stream")
        body, _status = error_body(exc)
        yield sse_event(body)
    finally:
        aclose = getattr(payloads, "aclose", None)
        if aclose is not None:
            await aclose()
    yield DONE


def named_sse_event(payload: dict[str, Any]) -> str:
    """An event named by its payload's `type` (the Responses API's stream: `event: response.created`)."""
    return f"event: {payload['type']}\n{sse_event(payload)}"


async def named_sse_events(payloads: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Named events, without [DONE] (the Responses API's streams end with their last event). The payloads end
    a failed response themselves (`error`, then `response.failed`); an error past that is one `error` event."""
    try:
        async for payload in payloads:
            yield named_sse_event(payload)
    except Exception as exc:  # CancelledError (the client left) propagates
        log.exception("error inside a stream")
        error = error_body(exc)[0]["error"]
        yield named_sse_event({"type": "error", "sequence_number": -1, **error})
    finally:
        aclose = getattr(payloads, "aclose", None)
        if aclose is not None:
            await aclose()


async def ndjson_lines(payloads: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Ollama's streams: one JSON object per line; an error becomes one `{"error": "..."}` line, the last."""
    try:
        async for payload in payloads:
            yield json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"
    except Exception as exc:  # CancelledError (the client left) propagates
        if not isinstance(exc, APIError):
            log.exception("error inside a stream")
        body, _status = error_body(exc, "ollama")
        yield json.dumps(body, ensure_ascii=False) + "\n"
    finally:
        aclose = getattr(payloads, "aclose", None)
        if aclose is not None:
            await aclose()


async def ndjson_response(payloads: AsyncIterator[dict[str, Any]]) -> Response:
    response = Response(
        ndjson_lines(payloads), 200, {"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"}
    )
    response.timeout = None
    return response


async def named_sse_response(payloads: AsyncIterator[dict[str, Any]]) -> Response:
    response = Response(named_sse_events(payloads), 200, HEADERS)
    response.timeout = None
    return response


async def sse_response(payloads: AsyncIterator[dict[str, Any]]) -> Response:
    """A streaming Quart response (no response timeout: a generation may take minutes)."""
    response = Response(sse_events(payloads), 200, HEADERS)
    response.timeout = None
    return response
