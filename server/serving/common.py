"""What chat and completions share: running one engine call, several at once, ids.

A `Generation` is started by awaiting the engine's first event (`Started`), so a
rejected prompt (too long, bad tokens) raises before any response is sent and
becomes a normal HTTP error, also for `stream: true`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from ortserve.core.store import ModelEntry
from ortserve.server import __version__, request_log
from ortserve.server.engine.generation import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    PromptLogprobs,
    SamplingParams,
    Started,
    TextDelta,
    TextGenerator,
    TokenLogprob,
)
from ortserve.server.errors import BackendError

SYSTEM_FINGERPRINT = f"fp_ortserve_{__version__}"

T = TypeVar("T")


def chunk_body(chunk: Any, include_usage: bool) -> dict[str, Any]:
    """An SSE chunk as JSON; `usage` appears only when the client asked for stream_options.include_usage."""
    body = chunk.model_dump()
    if not include_usage:
        del body["usage"]
    return body


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def fit_vocabulary(params: SamplingParams, entry: ModelEntry) -> SamplingParams:
    """A top_k at or past the size of the model's vocabulary keeps every token, so it is no cut at all
    (onnxruntime-genai refuses such a k; a request for top_k 100000 is valid on a 150k model)."""
    vocab = vocab_size(entry)
    return replace(params, top_k=0) if vocab and params.top_k >= vocab else params


def vocab_size(entry: ModelEntry) -> int | None:
    """`model.vocab_size` of the model's genai_config.json (None when it names none)."""
    return _vocab_size(str(entry.folder / "genai_config.json"), entry.manifest.get("_folder_mtime"))


@functools.lru_cache(maxsize=64)
def _vocab_size(path: str, _version: object) -> int | None:
    try:
        size = json.loads(Path(path).read_text(encoding="utf-8"))["model"]["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) and size > 0 else None


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """The parameters of a prompt's choice `index` (n, best_of): with a seed, choice i samples with
    seed + i, so the choices differ and the same request gives the same choices again."""
    if index == 0 or params.seed is None:
        return params
    return replace(params, seed=params.seed + index)


@dataclass
class Collected:
    """A whole generation: its text, its end, and (if asked) its tokens' logprobs."""

    text: str
    finished: Finished
    logprobs: list[TokenLogprob]

    @property
    def mean_logprob(self) -> float:
        """Per generated token, the end of sequence included (best_of's ranking); 0 when nothing was generated."""
        total = self.finished.cumulative_logprob or 0.0
        return total / self.finished.completion_tokens if self.finished.completion_tokens else 0.0


@dataclass
class Generation:
    """One running engine call, after its prompt was accepted."""

    started: Started
    events: AsyncIterator[GenerationEvent]
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None  # once read (PromptLogprobs comes before any text)
    _peeked: list[TextDelta | Finished] = field(default_factory=list)

    @classmethod
    async def start(cls, generator: TextGenerator, request: GenerationRequest) -> Generation:
        events = generator.generate(request)
        try:
            first = await anext(events)
            if not isinstance(first, Started):
                raise BackendError(f"The model sent {type(first).__name__} before Started.")
        except BaseException:
            await _aclose(events)
            raise
        return cls(first, events)

    async def read_prompt_logprobs(self) -> tuple[TokenLogprob, ...]:
        """The prompt's logprobs (asked with `prompt_logprobs`): the engine sends them before any text."""
        while self.prompt_logprobs is None:
            event = await anext(self.events, None)
            if event is None:
                raise BackendError("The model stopped without finishing the generation.")
            if isinstance(event, PromptLogprobs):
                self.prompt_logprobs = event.entries
            elif isinstance(event, (TextDelta, Finished)):  # a second Started is never sent
                self._peeked.append(event)
                if isinstance(event, Finished):
                    raise BackendError("The model sent no logprobs for the prompt.")
        return self.prompt_logprobs

    async def deltas(self) -> AsyncGenerator[TextDelta | Finished, None]:
        """The rest of the events; ends after Finished (an engine that stops without one is an error)."""
        record = request_log.current()  # the request's log line and metrics: first token time, token counts
        while self._peeked:
            yield _noted(self._peeked.pop(0), record)
        async for event in self.events:
            if isinstance(event, PromptLogprobs):
                self.prompt_logprobs = event.entries
            if isinstance(event, (TextDelta, Finished)):
                yield _noted(event, record)
            if isinstance(event, Finished):
                return
        raise BackendError("The model stopped without finishing the generation.")

    async def collect(self) -> Collected:
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        async with aclosing(self.deltas()) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                    logprobs.extend(event.logprobs)
                else:
                    return Collected("".join(parts), event, logprobs)
        raise AssertionError("unreachable")  # deltas() ends with Finished or raises

    async def aclose(self) -> None:
        await _aclose(self.events)


def _noted(event: TextDelta | Finished, record: request_log.RequestRecord | None) -> TextDelta | Finished:
    if record is not None:
        if isinstance(event, TextDelta):
            record.token_arrived()
        else:
            record.add_usage(event.prompt_tokens, event.completion_tokens)
    return event


async def _aclose(events: AsyncIterator) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; if one fails, cancel the others and raise the first error (not an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        raise


async def start_all(generator: TextGenerator, requests: list[GenerationRequest]) -> list[Generation]:
    """Start every request concurrently; if one is rejected, close those already started."""
    started: list[Generation] = []

    async def start(request: GenerationRequest) -> Generation:
        generation = await Generation.start(generator, request)
        started.append(generation)
        return generation

    try:
        return await gather_all(start(r) for r in requests)
    except BaseException:
        for generation in started:
            await generation.aclose()
        raise


async def merge(generations: list[Generation]) -> AsyncGenerator[tuple[int, TextDelta | Finished], None]:
    """The events of several generations as they come, tagged with their index."""
    if len(generations) == 1:
        try:
            async with aclosing(generations[0].deltas()) as events:
                async for event in events:
                    yield 0, event
        finally:
            await generations[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, TextDelta | Finished | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async with aclosing(generation.deltas()) as events:
                async for event in events:
                    await queue.put((index, event))
        except Exception as exc:
            await queue.put((index, exc))
        await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(generations)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for generation in generations:  # also those whose pump was cancelled before it began
            await generation.aclose()
