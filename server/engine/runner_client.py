"""`RunnerGenerator`: the server-side proxy of one chat model served in its own runner process.

This side never imports onnxruntime-genai: the runner process (runner_main.py) does.

The event loop never waits on the runner: a sender thread writes requests to one
pipe, a reader thread reads the runner's event batches from another and hands each
event to its request's asyncio queue with `call_soon_threadsafe`. When the runner
dies (killed, out of memory, crashed inside onnxruntime), the reader sees EOF and
every request in flight gets a BackendError; the next request starts a new runner.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import queue
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ortserve.server.engine import ipc, runner_main
from ortserve.server.engine.generation import Finished, GenerationEvent, GenerationRequest
from ortserve.server.engine.memory_watchdog import MemoryWatchdog
from ortserve.server.errors import APIError, BackendError

if TYPE_CHECKING:
    from ortserve.core.store import ModelEntry

log = logging.getLogger(__name__)


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class RunnerProcess:
    """One runner process and the two threads that talk to it."""

    def __init__(self, name: str, folder: Path, options: ipc.RunnerOptions):
        ctx = multiprocessing.get_context("spawn")  # no fork anywhere: Windows has none, macOS dislikes it
        self._requests_in, self._requests = ctx.Pipe(duplex=False)
        self._events, self._events_out = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=runner_main.main,
            args=(str(folder), options, self._requests_in, self._events_out),
            name=f"ortserve-runner[{name}]",
            daemon=True,
        )
        self.name = name
        self.ready: concurrent.futures.Future[ipc.RunnerInfo] = concurrent.futures.Future()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards _waiters and dead
        self._waiters: dict[int, _Waiter] = {}
        self.dead: str | None = None  # why it stopped, once it has
        self.stopping = False
        self.memory_limit = options.memory_limit
        self._killed_for: str | None = None  # why the watchdog stopped it
        self._watchdog: MemoryWatchdog | None = None
        self._outbox: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()

    async def start(self) -> ipc.RunnerInfo:
        await asyncio.to_thread(self.process.start)
        # the child holds its own copies now; closing ours lets either side see EOF when the other dies
        self._requests_in.close()
        self._events_out.close()
        if self.memory_limit and self.process.pid is not None:
            self._watchdog = MemoryWatchdog(self.process.pid, self.memory_limit, self._over_memory)
            self._watchdog.start()
        threading.Thread(target=self._read, name=f"{self.process.name}-reader", daemon=True).start()
        threading.Thread(target=self._write, name=f"{self.process.name}-writer", daemon=True).start()
        return await asyncio.wrap_future(self.ready)

    @property
    def alive(self) -> bool:
        return self.dead is None

    # ---- requests -------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop) -> tuple[int, asyncio.Queue]:
        """Register a request; its events will arrive on the returned queue."""
        rid = next(self._ids)
        waiter = _Waiter(loop, asyncio.Queue())
        with self._lock:
            if self.dead is not None:
                raise BackendError(self.dead)
            self._waiters[rid] = waiter
        return rid, waiter.queue

    def forget(self, rid: int) -> None:
        with self._lock:
            self._waiters.pop(rid, None)

    def send(self, message: tuple) -> None:
        self._outbox.put(message)  # never blocks: the writer thread does the pipe write

    def _over_memory(self, rss: int) -> None:
        """The watchdog's call: stop the runner; its requests fail saying why, the next one starts a new one."""
        mb = 1024 * 1024
        self._killed_for = (
            f"the runner for model '{self.name}' used {rss // mb:,} MB, over its memory ceiling of "
            f"{self.memory_limit // mb:,} MB (runner_memory_limit), and was stopped; the next request starts a "
            "new one"
        )
        log.error("%s", self._killed_for)
        self.process.kill()

    def stop(self) -> None:
        self.stopping = True
        self._outbox.put((ipc.SHUTDOWN,))
        self._outbox.put(None)

    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._requests.send(message)
            except (OSError, ValueError):  # runner gone: the reader reports it
                break
        self._requests.close()

    # ---- events -------------------------------------------------------------
    def _read(self) -> None:
        try:
            kind, payload = self._events.recv()
            if kind == ipc.FAILED:
                self._die(f"model '{self.name}' failed to load: {payload}")
                return
            if not self.ready.done():  # done: the start was cancelled and the process is being killed
                self.ready.set_result(payload)
            while True:
                kind, batch = self._events.recv()
                self._dispatch(batch)
        except (EOFError, OSError):
            pass
        except Exception:  # a bug here must still end the waits
            log.exception("runner reader for %s failed", self.name)
        self.process.join(timeout=5)
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._killed_for is not None:
            self._die(self._killed_for)
        elif self.stopping:
            self._die(f"model '{self.name}' was unloaded")
        else:
            code = self.process.exitcode
            self._die(f"the runner for model '{self.name}' stopped unexpectedly (exit code {code})")

    def _dispatch(self, batch: list[tuple[int, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = defaultdict(list)
        with self._lock:
            for rid, item in batch:
                waiter = self._waiters.get(rid)
                if waiter is None:  # cancelled meanwhile
                    continue
                if isinstance(item, (Finished, ipc.Failure)):
                    del self._waiters[rid]
                by_loop[waiter.loop].append((waiter.queue, item))
        for loop, items in by_loop.items():
            _deliver_soon(loop, items)

    def interrupt(self, failure: ipc.Failure) -> None:
        """End every request in flight with `failure` (the server is stopping), and free their places."""
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = defaultdict(list)
        for rid, waiter in waiters.items():
            by_loop[waiter.loop].append((waiter.queue, failure))
            self.send((ipc.CANCEL, rid))
        for loop, items in by_loop.items():
            _deliver_soon(loop, items)

    def _die(self, reason: str) -> None:
        with self._lock:
            if self.dead is None:
                self.dead = reason
            waiters, self._waiters = self._waiters, {}
        if not self.ready.done():
            self.ready.set_exception(BackendError(self.dead or reason))
        failure = ipc.Failure("BackendError", self.dead or reason)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = defaultdict(list)
        for waiter in waiters.values():
            by_loop[waiter.loop].append((waiter.queue, failure))
        for loop, items in by_loop.items():
            _deliver_soon(loop, items)
        self._outbox.put(None)
        self._events.close()


def _deliver_soon(loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Queue, Any]]) -> None:
    try:
        loop.call_soon_threadsafe(_deliver, items)
    except RuntimeError:  # that loop is closed: nobody is waiting any more
        pass


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)


class RunnerGenerator:
    """A `TextGenerator` whose model runs in a runner process (restarted on demand if it dies)."""

    def __init__(self, entry: ModelEntry, options: ipc.RunnerOptions):
        self.name = entry.name
        self.folder = Path(entry.folder)
        self.device = options.device  # already resolved by load_generator: "cpu", "cuda", ...
        self._options = options
        self.context_length = 0
        self.fim_tokens: tuple[str, str, str] | None = None
        self.guidance_error: str | None = None
        self._runner: RunnerProcess | None = None
        self.restarts = 0  # runners started again after one died
        self._start_lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        await self._ensure_runner()

    async def _ensure_runner(self) -> RunnerProcess:
        current = self._runner
        if current is not None and current.alive:
            return current
        async with self._start_lock:
            if self._closed:
                raise BackendError(f"model '{self.name}' was unloaded")
            if self._runner is None or not self._runner.alive:
                if self._runner is not None:
                    log.warning("%s; starting a new runner", self._runner.dead)
                    self.restarts += 1
                fresh = RunnerProcess(self.name, self.folder, self._options)
                try:
                    info = await fresh.start()
                except BaseException:
                    fresh.stop()
                    if fresh.process.is_alive():
                        fresh.process.kill()
                    raise
                self.context_length, self.fim_tokens = info.context_length, info.fim_tokens
                self.device = info.device  # what the runner really loaded the model on
                self.guidance_error = info.guidance_error
                if info.guidance_error:
                    log.warning("model '%s': constrained decoding unavailable: %s", self.name, info.guidance_error)
                self._runner = fresh
            return self._runner

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        runner = await self._ensure_runner()
        rid, events = runner.open(asyncio.get_running_loop())
        runner.send((ipc.GENERATE, rid, request))
        finished = False
        try:
            while True:
                item = await events.get()
                if isinstance(item, ipc.Failure):
                    finished = True
                    raise item.to_exception()
                if isinstance(item, Finished):
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:  # the consumer left early (client disconnect): free its place in the runner
                runner.forget(rid)
                runner.send((ipc.CANCEL, rid))

    async def stats(self) -> dict[str, Any]:
        """The runner's view: pid, active and queued requests (for `ps`-like listings and tests)."""
        runner = await self._ensure_runner()
        rid, replies = runner.open(asyncio.get_running_loop())
        runner.send((ipc.STATS, rid))
        try:
            reply = await replies.get()
        finally:
            runner.forget(rid)
        if isinstance(reply, ipc.Failure):
            raise reply.to_exception()
        return reply

    def interrupt(self, error: APIError) -> None:
        if self._runner is not None:
            self._runner.interrupt(ipc.Failure.from_exception(error))

    @property
    def pid(self) -> int | None:
        return self._runner.process.pid if self._runner is not None and self._runner.alive else None

    async def close(self) -> None:
        self._closed = True
        async with self._start_lock:
            current, self._runner = self._runner, None
        if current is None:
            return
        current.stop()
        await asyncio.to_thread(current.process.join, 10)
        if current.process.is_alive():
            current.process.kill()
            await asyncio.to_thread(current.process.join, 5)
