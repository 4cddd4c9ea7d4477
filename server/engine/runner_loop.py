"""`RunnerLoop`: the message loop a runner process runs, whichever scheduler it uses.

The loop is single-threaded. Each tick it reads every waiting message from the server, lets the
scheduler admit and advance its requests, and sends that tick's events back in one message. The two
schedulers (generator_scheduler.GeneratorScheduler, engine_scheduler.EngineScheduler) fill in
`_new_request`, `_drop`, `_has_room`, `_start`, `_tick` and `stats`; the server side cannot tell which one it talks to.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from ortserve.server.engine import ipc
from ortserve.server.engine.generation import TextDelta

# Text from fast models is sent at most this often, merged per request; Started, Finished,
# errors and each request's first text go out at once. 20 ms (50 updates a second) is below what
# a reader notices, and spares the server (and the client) a message per token: with 4 streams
# batched, aggregate throughput over HTTP rose ~6% against 5 ms, one stream's ~8% (bench_generation).
FLUSH_INTERVAL = 0.02


class RunnerLoop:
    """Messages in, events out; `waiting` and `active` hold the scheduler's requests (each has a `rid`)."""

    def __init__(self, options: ipc.RunnerOptions, requests: Any, events: Any):
        self.options = options
        self.requests = requests
        self.events = events
        self.waiting: deque[Any] = deque()  # accepted, not yet generating
        self.active: list[Any] = []  # generating
        self.outbox: list[tuple[int, Any]] = []
        self.urgent = False  # the outbox holds something that must not wait for FLUSH_INTERVAL
        self.last_send = 0.0

    def serve(self) -> None:
        while self._receive(block=not self.active and not self.waiting):
            self._admit()
            self._tick()
            if self.outbox and (self.urgent or not self.active or time.monotonic() - self.last_send >= FLUSH_INTERVAL):
                if not self._send():
                    return

    # ---- what a scheduler fills in ---------------------------------------------
    def _new_request(self, rid: int, request: Any) -> Any:
        """The scheduler's object for a GenerationRequest (with its `started` event); raises a bad one's error."""
        raise NotImplementedError

    def _drop(self, rid: int) -> None:
        """The client left: stop the request `rid` wherever it is."""
        raise NotImplementedError

    def _has_room(self) -> bool:
        """Whether another waiting request may start now."""
        raise NotImplementedError

    def _start(self, accepted: Any) -> bool:
        """Start a waiting request (raises its failure); False: it ended at once and is not active."""
        raise NotImplementedError

    def _tick(self) -> None:
        """Advance the active requests one step and `_emit` their events."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "active": len(self.active), "queued": len(self.waiting)}

    # ---- messages from the server ------------------------------------------
    def _receive(self, block: bool) -> bool:
        """Handle every message already waiting (blocking for the first one when idle). False: stop."""
        try:
            while self.requests.poll(None if block else 0):
                block = False
                if not self._handle(self.requests.recv()):
                    return False
        except (EOFError, OSError):  # the server went away
            return False
        return True

    def _accept(self, rid: int, request: Any) -> None:
        try:
            accepted = self._new_request(rid, request)
        except Exception as exc:  # a bad request fails alone
            self._post(rid, ipc.Failure.from_exception(exc))
            return
        self._post(rid, accepted.started)
        self.waiting.append(accepted)

    def _admit(self) -> None:
        while self.waiting and self._has_room():
            accepted = self.waiting.popleft()
            try:
                if not self._start(accepted):
                    continue
            except Exception as exc:
                self._post(accepted.rid, ipc.Failure.from_exception(exc))
                continue
            self.active.append(accepted)

    def _handle(self, message: tuple) -> bool:
        kind = message[0]
        if kind == ipc.GENERATE:
            self._accept(message[1], message[2])
        elif kind == ipc.CANCEL:
            self._drop(message[1])
        elif kind == ipc.STATS:
            self._post(message[1], self.stats())
        elif kind == ipc.SHUTDOWN:
            return False
        return True

    # ---- events to the server ------------------------------------------------
    def _emit(self, request: Any, events: list[Any]) -> None:
        """Queue a request's events; anything but its later text goes out at once."""
        for event in events:
            if not isinstance(event, TextDelta) or not request.announced:
                request.announced = True
                self.urgent = True
            self.outbox.append((request.rid, event))

    def _post(self, rid: int, item: Any) -> None:
        self.outbox.append((rid, item))
        self.urgent = True

    def _send(self) -> bool:
        batch, self.outbox, self.urgent = merge_deltas(self.outbox), [], False
        try:
            self.events.send((ipc.EVENTS, batch))
        except (OSError, EOFError):
            return False
        self.last_send = time.monotonic()
        return True


def merge_deltas(batch: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Join each request's consecutive TextDeltas into one (order per request is kept)."""
    merged: list[tuple[int, Any]] = []
    open_delta: dict[int, int] = {}  # rid -> index in `merged` of its last item, if a TextDelta
    for rid, item in batch:
        at = open_delta.get(rid)
        if isinstance(item, TextDelta) and at is not None:
            prev = merged[at][1]
            merged[at] = (
                rid,
                TextDelta(prev.text + item.text, prev.token_ids + item.token_ids, prev.logprobs + item.logprobs),
            )
            continue
        merged.append((rid, item))
        if isinstance(item, TextDelta):
            open_delta[rid] = len(merged) - 1
        else:
            open_delta.pop(rid, None)
    return merged
