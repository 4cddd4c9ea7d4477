"""`BatchedScheduler`: the runner's scheduler on a CPU: every decoding request of the model steps in one
onnxruntime call (`BatchedDecoder`), so the aggregate speed grows with the number of streams, as llama.cpp's
does; each tick also prefills one chunk of one prompt.

Requests the batched path does not serve (`batched_request.fits_batched`: images, grammars, prompt logprobs)
run beside it on their own og.Generator, as `GeneratorScheduler` runs every request (this class extends it).

Rows: up to `options.parallel` requests hold a row of the KV cache each (`KvRows`). Each tick reads one chunk
of one prompt (the shortest left, aged: see `_next_prefill`); a row whose prompt is still being read runs a
throwaway token in the decode step when it sits among decoding rows. A finished request's row stays as a
kept row, from which a later prompt sharing its prefix starts (the prompt cache of this path;
`prompt_cache_bytes` 0 turns it off). The KV buffers grow with the longest row; past the KV budget (half the
runner's memory ceiling) they hold fewer rows, and new requests wait for one.

Imported only by the runner process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ortserve.server.engine import ipc
from ortserve.server.engine.admission import admit
from ortserve.server.engine.batched_decoder import GROWTH_STEP, BatchedDecoder, unsupported
from ortserve.server.engine.batched_request import BatchedRequest, fits_batched
from ortserve.server.engine.generator_request import GeneratorRequest
from ortserve.server.engine.generator_scheduler import GeneratorScheduler, generate_greedy
from ortserve.server.engine.guidance import probe_guidance
from ortserve.server.engine.kv_rows import KvRows
from ortserve.server.engine.runner_model import RunnerModel, load_runner_model

DEFAULT_KV_BUDGET = 2 * 1024**3  # without a memory ceiling


def batched_unavailable(folder: Path, options: ipc.RunnerOptions) -> str | None:
    """Why this runner uses one og.Generator per request instead (None: it batches)."""
    if not options.batched:
        return "batch_decode is off"
    return unsupported(folder, options.device)


def load(folder: Path, options: ipc.RunnerOptions) -> tuple[tuple[RunnerModel, BatchedDecoder], ipc.RunnerInfo]:
    """The decoder session, and the model's tokenizers and facts; its og.Model (a second copy of the weights) and
    the grammar probe wait for the first request that runs on og.Generator."""
    model = load_runner_model(folder, options, lazy=True)
    model.guidance_probe = lambda: probe_guidance(model, lambda *args: generate_greedy(model, *args))
    decoder = BatchedDecoder(folder, options.parallel, options.threads, max_capacity=model.context_length)
    return (model, decoder), model.info(options, options.device)


class BatchedScheduler(GeneratorScheduler):
    def __init__(
        self, loaded: tuple[RunnerModel, BatchedDecoder], options: ipc.RunnerOptions, requests: Any, events: Any
    ):
        model, self.decoder = loaded
        super().__init__(model, options, requests, events)
        self.rows = KvRows(self.decoder.rows)
        self.keep_rows = options.prompt_cache_bytes > 0
        self.ticks = 0
        budget = options.memory_limit // 2 if options.memory_limit else DEFAULT_KV_BUDGET
        # one row of the whole context always fits, whatever the budget says
        self.kv_budget = max(budget, self.decoder.row_bytes_per_token * self.decoder.max_capacity)

    # ---- RunnerLoop ---------------------------------------------------------------
    def _new_request(self, rid: int, request: Any) -> Any:  # a BatchedRequest, or a GeneratorRequest
        admitted = admit(self.model, request)
        if fits_batched(admitted):
            return BatchedRequest(rid, self.model, admitted)
        return GeneratorRequest(rid, self.model, admitted, self.options.prefill_chunk, self.prompt_cache)

    def _admit(self) -> None:
        """Start waiting requests in order while there is room for each: a free row (batched), or fewer than
        `parallel` og.Generators (the others)."""
        while self.waiting:
            head = self.waiting[0]
            if isinstance(head, BatchedRequest):
                if self.rows.free == 0 and not self._more_rows():
                    return
                self.waiting.popleft()
                self._start_batched(head)
            else:
                if sum(1 for r in self.active if isinstance(r, GeneratorRequest)) >= self.options.parallel:
                    return
                self.waiting.popleft()
                try:
                    head.start()
                except Exception as exc:  # noqa: BLE001 - its failure is the request's
                    self._post(head.rid, ipc.Failure.from_exception(exc))
                    continue
            self.active.append(head)

    def _drop(self, rid: int) -> None:
        for request in [r for r in self.active if r.rid == rid and isinstance(r, BatchedRequest)]:
            self._finish(request)
        super()._drop(rid)

    def stats(self) -> dict[str, Any]:
        batched = [r for r in self.active if isinstance(r, BatchedRequest)]
        return {
            **super().stats(),
            "rows": self.decoder.rows,
            "rows_active": len(batched),
            "rows_kept": len(self.rows.kept),
            "kv_capacity": self.decoder.capacity,
            "kv_bytes": self.decoder.nbytes,
        }

    def _tick(self) -> None:
        self._prefill_step()
        self._decode_step()
        self._step([r for r in self.active if isinstance(r, GeneratorRequest)])

    # ---- the batched path -----------------------------------------------------
    def _next_prefill(self) -> BatchedRequest | None:
        """The prompt to read a chunk of now: the one with the fewest tokens left, less a chunk for each tick it
        has held its row (a short prompt passes a long one, and a long one is not passed for ever)."""
        reading = [r for r in self.rows.active if r.prefilling]
        chunk = self.options.prefill_chunk
        return min(reading, key=lambda r: r.prompt_tokens - r.cursor - chunk * (self.ticks - r.since), default=None)

    def _start_batched(self, request: BatchedRequest) -> None:
        prefix, swaps = self.rows.acquire(request, request.ids)
        self._swap(swaps)
        request.start_at(prefix)
        request.since = self.ticks

    def _prefill_step(self) -> None:
        self.ticks += 1
        request = self._next_prefill()
        if request is None:
            return
        chunk = request.chunk(self.options.prefill_chunk)
        try:
            # room for the whole prompt and a first stretch of the reply at once: growing the buffers is a copy
            self._fit(request.prompt_tokens + min(request.budget, GROWTH_STEP))
            logits = self.decoder.run(self.rows.row_of(request), chunk[None, :], [request.cursor])
            events = request.prefilled(len(chunk), logits[0])
        except Exception as exc:  # onnxruntime failed on this request: fail it, keep the others
            self._fail(request, exc)
            return
        self._emitted(request, events)

    def _decode_step(self) -> None:
        active = self.rows.active
        decoding = [i for i, r in enumerate(active) if not r.prefilling]
        if not decoding:
            return
        span = decoding[-1] + 1  # rows 0..span-1; a prompt being read among them runs a throwaway token
        ids = np.zeros((span, 1), dtype=np.int64)
        lengths = []
        for i, request in enumerate(active[:span]):
            if not request.prefilling:
                ids[i, 0] = request.next_input
            lengths.append(request.length)
        try:
            self._fit(max(lengths) + 1)
            logits = self.decoder.run(0, ids, lengths)
        except Exception as exc:  # the whole step failed: every request in it fails, the runner goes on
            for request in list(active[:span]):
                self._fail(request, exc)
            return
        # every row takes its token before any row is released: a release moves another row's KV by its length
        taken = [(r, r.take(logits[i])) for i, r in enumerate(active[:span]) if not r.prefilling]
        for request, events in taken:
            self._emitted(request, events)

    def _emitted(self, request: BatchedRequest, events: list[Any]) -> None:
        self._emit(request, events)
        if request.done:
            self._finish(request)

    def _fail(self, request: BatchedRequest, exc: Exception) -> None:
        self._emit(request, [ipc.Failure.from_exception(exc)])
        request.done = True
        self._finish(request, keep=False)

    def _finish(self, request: BatchedRequest, keep: bool = True) -> None:
        """Free its row (kept for its prefix when the prompt cache is on)."""
        if request not in self.rows.active:
            return
        tokens = request.kept_tokens() if keep and self.keep_rows else None
        self._swap(self.rows.release(request, tokens))
        request.done = True
        if request in self.active:
            self.active.remove(request)

    def _fit(self, needed: int) -> None:
        """Grow the KV buffers to hold `needed` tokens per row; past the budget with fewer rows (never fewer than
        the active ones; kept rows that no longer fit are forgotten)."""
        if needed > self.decoder.capacity:
            self._reshape(self.decoder.capacity_for(needed))

    def _more_rows(self) -> bool:
        """Room for another row where the budget had cut them (the long rows that needed it are gone): the
        capacity falls back to what the active rows need. Whether a row is free now."""
        decoder = self.decoder
        if decoder.rows < self.options.parallel:
            needed = max([r.length + 1 for r in self.rows.active] + [1])
            self._reshape(decoder.capacity_for(needed), more_rows=True)
        return self.rows.free > 0

    def _reshape(self, capacity: int, more_rows: bool = False) -> None:
        per_row = capacity * self.decoder.row_bytes_per_token
        rows = max(len(self.rows.active), min(self.options.parallel, self.kv_budget // per_row))
        if (rows, capacity) == (self.decoder.rows, self.decoder.capacity) or (more_rows and rows <= self.decoder.rows):
            return
        self.rows.resize(rows, capacity)
        used = {i: r.length for i, r in enumerate(self.rows.active)}
        used.update({i: len(k.tokens) for i, k in self.rows.kept.items()})
        self.decoder.reshape(rows, capacity, used)

    def _swap(self, swaps: list[tuple[int, int, int]]) -> None:
        for a, b, length in swaps:
            self.decoder.swap(a, b, length)
