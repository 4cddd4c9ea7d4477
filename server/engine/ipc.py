"""What travels between the server process and a runner process (both import this; it imports nothing heavy).

Server -> runner, one pipe: ``(GENERATE, rid, GenerationRequest)``, ``(CANCEL, rid)``,
``(STATS, rid)``, ``(SHUTDOWN,)``.

Runner -> server, another pipe: first ``(READY, RunnerInfo)`` or ``(FAILED, message)``,
then ``(EVENTS, [(rid, item), ...])`` once per scheduler tick, where an item is a
Started / TextDelta / Finished event, a `Failure` (ends that request) or a stats dict.
One pipe per direction keeps each end in a single thread on every platform.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortserve.server.errors import (
    APIError,
    BackendError,
    ContextLengthError,
    InvalidRequestError,
    NotSupportedError,
    OverloadedError,
    ShuttingDownError,
)

GENERATE, CANCEL, STATS, SHUTDOWN = "generate", "cancel", "stats", "shutdown"
READY, FAILED, EVENTS = "ready", "failed", "events"

# the errors a runner may raise for one request; anything else arrives as BackendError
_ERRORS: dict[str, type[APIError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequestError,
        ContextLengthError,
        NotSupportedError,
        BackendError,
        OverloadedError,
        ShuttingDownError,
    )
}


@dataclass(frozen=True)
class RunnerOptions:
    num_ctx: int | None
    device: str
    threads: int
    parallel: int  # requests generating at once; more wait in the runner's queue
    prefill_chunk: int  # prompt tokens appended per scheduler tick
    memory_limit: int = 0  # bytes of resident memory past which the server stops the runner; 0: no ceiling
    prompt_cache_bytes: int = 0  # KV bytes of finished generators kept for prompt reuse; 0: none kept
    batched: bool = True  # on a CPU, step every request's next token in one call (batched_scheduler.py)
    kv_cache_bytes: int = 0  # a paged model's KV pool (its share of the GPU budget); 0: the builder's sizing


@dataclass(frozen=True)
class RunnerInfo:
    context_length: int  # served: min(num_ctx, the model's context_length)
    fim_tokens: tuple[str, str, str] | None
    device: str
    threads: int
    guidance_error: str | None = None  # why grammars are not enforced; None: they are


@dataclass(frozen=True)
class Failure:
    """An APIError, serialized by class name so the server re-raises the same type."""

    error: str
    message: str
    param: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        if isinstance(exc, APIError) and type(exc).__name__ in _ERRORS:
            return cls(type(exc).__name__, exc.message, exc.param)
        return cls("BackendError", f"{type(exc).__name__}: {exc}")

    def to_exception(self) -> APIError:
        return _ERRORS.get(self.error, BackendError)(self.message, param=self.param)
