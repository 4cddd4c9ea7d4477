"""Stopping gracefully: SIGINT/SIGTERM (Ctrl-C and Ctrl-Break on Windows), then a grace period.

On the first signal the server stops accepting connections (Hypercorn closes its listeners when
the trigger below returns), new requests on open connections get a 503 `server_shutting_down`,
and the requests in flight get `shutdown_grace` seconds to finish. Whatever still runs then is
ended by the registry with the same error: a stream gets an error event and `[DONE]`, a plain
request a 503 JSON. A second signal ends them at once. Then the app's shutdown closes every
model (runner processes included) and `serve` returns, so the process exits 0 with nothing left
behind.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from ortserve.server.errors import ShuttingDownError
from ortserve.server.routes import AppState

log = logging.getLogger(__name__)

SIGNALS = ("SIGINT", "SIGTERM", "SIGBREAK")  # SIGBREAK: Ctrl-Break in a Windows console


def on_signals(callback: Callable[[], None]) -> None:
    """Call `callback` on the event loop for each stop signal (add_signal_handler where the loop has it,
    else Python's own handlers, as on Windows)."""
    loop = asyncio.get_running_loop()
    for name in SIGNALS:
        number = getattr(signal, name, None)
        if number is None:
            continue
        try:
            loop.add_signal_handler(number, callback)
        except (NotImplementedError, RuntimeError):  # Windows' loops; not the main thread

            def handler(*_: Any) -> None:
                loop.call_soon_threadsafe(callback)

            try:
                signal.signal(number, handler)
            except ValueError:  # not the main thread: whoever runs us handles signals
                pass


class Drain:
    """The shutdown trigger handed to Hypercorn, and what happens after it fires."""

    def __init__(self, state: AppState, grace: float, trigger: Callable[[], Awaitable[Any]] | None = None):
        self.state = state
        self.grace = grace
        self._trigger = trigger
        self._signalled = asyncio.Event()
        self._ended = False

    def signal(self) -> None:
        if self._signalled.is_set():  # a second Ctrl-C: do not wait for the grace period
            self.end_requests()
        self._signalled.set()

    async def __call__(self) -> None:
        """Return (so that Hypercorn stops accepting) on the first signal or when `trigger` returns."""
        if self._trigger is None:
            on_signals(self.signal)
            await self._signalled.wait()
        else:
            await self._trigger()
        self.state.status = "stopping"
        log.info("shutting down: requests in flight have %g s to finish (Ctrl-C again to end them now)", self.grace)
        asyncio.get_running_loop().call_later(self.grace, self.end_requests)

    def end_requests(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.state.registry.interrupt(
            ShuttingDownError("The server is shutting down; this request was stopped. Try again once it is back.")
        )
