"""A micro-batcher: concurrent requests' sequences run together, sorted by length, off the event loop.

Requests `submit()` their token-id sequences to one queue per model. A worker task takes what is
pending (under load: whatever queued while the previous batch ran; after an idle spell it first waits
`window_s` for the rest of a burst, unless its last round served a lone request: one client sending
requests one after the other would only wait for nothing), sorts it by length so rows pad
little, cuts it into batches of at most `max_batch` rows and `max_batch_tokens` padded tokens, and
runs each with `run` in a single worker thread (onnxruntime's `InferenceSession.run` releases the
GIL and uses every core itself). Rows are scattered back to their requests; a request whose every
row is done is answered at once.

Fairness: a round takes at most `ROUND_BATCHES * max_batch` rows, first come first served, so a
request with thousands of inputs does not hold the ones behind it for its whole duration. A cancelled
request (client gone) has its rows dropped before they run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ortserve.core.encoder import length_batches
from ortserve.server.errors import APIError, BackendError

log = logging.getLogger(__name__)

ROUND_BATCHES = 4

RunBatch = Callable[[list[np.ndarray]], np.ndarray]  # sequences -> one vector per sequence


@dataclass(eq=False)
class _Job:
    sequences: Sequence[np.ndarray]
    future: asyncio.Future
    order: list[int] = field(default_factory=list)  # longest first: neighbours batch well
    taken: int = 0
    remaining: int = 0
    out: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.order = sorted(range(len(self.sequences)), key=lambda i: -len(self.sequences[i]))
        self.remaining = len(self.sequences)


class MicroBatcher:
    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch: int = 32,
        max_batch_tokens: int = 16384,
        window_s: float = 0.002,
        name: str = "embedder",
    ):
        self.run = run
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.window_s = window_s
        self.name = name
        self.runs = 0  # batches run (one `run` call each)
        self.rows = 0  # sequences run
        self.windows = 0  # times the worker waited `window_s` for a burst
        self.batch_sizes: Counter[int] = Counter()  # rows per `run` call -> calls (the batch-size metric)
        self._pending: deque[_Job] = deque()
        self._unanswered: set[_Job] = set()  # queued or running
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ortserve-{name}")
        self._closed = False
        self._company = True  # whether the last round served more than one request

    @property
    def pending_rows(self) -> int:
        return sum(len(j.order) - j.taken for j in self._pending if not j.future.done())

    async def submit(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """The vectors of `sequences`, row i for sequence i."""
        if self._closed:
            raise BackendError(f"The model '{self.name}' is being unloaded; try again.")
        if not sequences:
            raise ValueError("nothing to run")
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work(), name=f"ortserve-batcher[{self.name}]")
        job = _Job(sequences, loop.create_future())
        self._unanswered.add(job)
        job.future.add_done_callback(lambda _: self._unanswered.discard(job))
        self._pending.append(job)
        self._wake.set()  # type: ignore[union-attr]
        return await job.future  # cancelling the caller cancels the future: its rows are skipped

    # ---- the worker ----------------------------------------------------------------------
    async def _work(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.window_s > 0 and self._company and self.pending_rows < self.max_batch:
                self.windows += 1
                await asyncio.sleep(self.window_s)  # idle until now: let the rest of a burst arrive
            while self._pending:
                items = self._take(ROUND_BATCHES * self.max_batch)
                try:
                    await self._round(items)
                except Exception as exc:  # a bug past `run` must not leave requests waiting forever
                    self._fail({job for job, _ in items}, exc)
                # more than one request in the round, or some arrived while it ran
                self._company = len({id(job) for job, _ in items}) > 1 or bool(self._pending)

    def _take(self, limit: int) -> list[tuple[_Job, int]]:
        """Up to `limit` (job, sequence index) pairs, first come first served."""
        items: list[tuple[_Job, int]] = []
        while self._pending and len(items) < limit:
            job = self._pending[0]
            if job.future.done():  # cancelled, or failed in an earlier batch
                self._pending.popleft()
                continue
            k = min(limit - len(items), len(job.order) - job.taken)
            items.extend((job, i) for i in job.order[job.taken : job.taken + k])
            job.taken += k
            if job.taken == len(job.order):
                self._pending.popleft()
        return items

    async def _round(self, items: list[tuple[_Job, int]]) -> None:
        lengths = [len(job.sequences[i]) for job, i in items]
        for batch in length_batches(lengths, self.max_batch, self.max_batch_tokens):
            live = [items[k] for k in batch if not items[k][0].future.done()]
            if not live:
                continue
            sequences = [job.sequences[i] for job, i in live]
            try:
                vectors = await asyncio.get_running_loop().run_in_executor(self._executor, self.run, sequences)
            except Exception as exc:
                self._fail({job for job, _ in live}, exc)
                continue
            finally:
                self.runs += 1
                self.rows += len(sequences)
                self.batch_sizes[len(sequences)] += 1
            self._scatter(live, vectors)

    @staticmethod
    def _scatter(live: list[tuple[_Job, int]], vectors: np.ndarray) -> None:
        for (job, i), row in zip(live, vectors, strict=True):
            if job.future.done():
                continue
            if job.out is None:
                job.out = np.empty((len(job.sequences), vectors.shape[1]), dtype=vectors.dtype)
            job.out[i] = row
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.out)

    def _fail(self, jobs: set[_Job], exc: Exception) -> None:
        if not isinstance(exc, APIError):
            log.error("running a batch of '%s' failed", self.name, exc_info=exc)
            exc = BackendError(f"The model '{self.name}' failed: {type(exc).__name__}: {exc}")
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)

    async def close(self) -> None:
        """Stop taking work; requests still queued get a BackendError; wait for a batch in flight."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait([self._worker])
        self._fail(set(self._unanswered), BackendError(f"The model '{self.name}' was unloaded."))
        self._pending.clear()
        await asyncio.to_thread(self._executor.shutdown, wait=True)
