"""A runner's memory ceiling: a thread that samples the process's resident memory and stops it past a limit.

Bounds on what a request may ask (grammar limits, context sizes) come first; this bounds the damage of
anything they miss. Measured before the grammar limits: one JSON schema grew a runner to 21 GB until the
kernel killed it, and a request queued behind it got a bare 500. With the watchdog the runner is stopped
at its ceiling, its requests fail with an error that says why, and the next request starts a new runner;
other models and the server are untouched. psutil reads the resident set on Linux, macOS and Windows alike.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psutil

log = logging.getLogger(__name__)

INTERVAL = 0.25  # seconds between samples: a runner allocating 1 GB/s overshoots by ~250 MB at most


def default_limit(weights_bytes: int) -> int:
    """A runner's default ceiling: twice its weights (the model, its KV caches, onnxruntime's arenas) plus
    2 GiB for grammars, images and the interpreter."""
    return 2 * weights_bytes + 2 * 1024**3


class MemoryWatchdog:
    """Calls `exceeded(rss)` once, from its own thread, when process `pid` holds more than `limit` bytes."""

    def __init__(self, pid: int, limit: int, exceeded: Callable[[int], None], interval: float = INTERVAL):
        self.pid, self.limit, self.exceeded, self.interval = pid, limit, exceeded, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"ortserve-watchdog[{pid}]", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        try:
            process = psutil.Process(self.pid)
            while not self._stop.wait(self.interval):
                rss = process.memory_info().rss
                if rss > self.limit:
                    self.exceeded(rss)
                    return
        except psutil.Error:  # the process is gone: nothing to watch
            return
