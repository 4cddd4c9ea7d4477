"""`TokenEvents`: one request's generated token ids -> our events, the same for both schedulers.

Each token is counted, checked against the end tokens, detokenized (sliding window), matched against
the stop strings across tokens and, when logprobs are asked, given its entry; text that may still
become a stop string is held back. `finish` flushes the detokenizer and the stop matcher and ends with
`Finished` (the finish reason, the token counts, the cumulative logprob). The Generator path's
`GeneratorRequest` and the og.Engine path's `EngineTurn` both feed it; only the Generator path has
logprobs (the Engine does not expose the logits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from ortserve.server.engine.generation import Finished, SamplingParams, TextDelta
from ortserve.server.engine.logits import LogprobsTrail, entry
from ortserve.server.engine.stops import StopMatcher

if TYPE_CHECKING:
    from ortserve.server.engine.runner_model import RunnerModel


class TokenEvents:
    """`add` each generated token (with its step's log-distribution when logprobs are asked); `finish` once."""

    def __init__(self, model: RunnerModel, params: SamplingParams, prompt_tokens: int, budget: int):
        self.model = model
        self.params = params
        self.prompt_tokens = prompt_tokens
        self.budget = budget
        self.generated = 0  # the end token included, as OpenAI counts it
        self.cached_tokens = 0  # prompt tokens whose KV came from the prompt cache (set when the request starts)
        self.finished = False  # Finished was produced
        self._stream = model.detokenizer(params.keep_special)
        self._stops = StopMatcher(params.stop)
        self._pending: list[int] = []  # generated tokens not yet sent in a delta (text held back or empty)
        self._logprobs = LogprobsTrail() if params.logprobs is not None else None

    def add(self, token: int, logprobs: np.ndarray | None = None) -> list[TextDelta | Finished]:
        """The events for one generated token; the last one is Finished when it ended the request."""
        self.generated += 1
        trail = self._logprobs
        if trail is not None and logprobs is not None:
            trail.cumulative += float(logprobs[token])
        if token in self.model.eos_ids:
            return self.finish("stop")
        self._pending.append(token)
        piece = self._stream.feed(token)
        if trail is not None and logprobs is not None:
            trail.add(entry(logprobs, token, self.params.logprobs or 0, self.model.speller), len(piece))
        text, stopped = self._stops.feed(piece)
        if stopped:
            return self.finish("stop", text)
        if self.generated >= self.budget:
            return self.finish("length", text)
        if not text:
            return []
        delta = TextDelta(text, tuple(self._pending), () if trail is None else trail.release(len(text)))
        self._pending = []
        return [delta]

    def end_of_sequence(self) -> list[TextDelta | Finished]:
        """The engine ended on an end token it did not hand over: count it and finish."""
        self.generated += 1
        return self.finish("stop")

    def finish(self, reason: Literal["stop", "length"], text: str = "") -> list[TextDelta | Finished]:
        """The last events: what the detokenizer and the stop matcher still hold, then Finished."""
        tail = self._stream.flush()  # bytes that never completed a character
        trail = self._logprobs
        if trail is not None:
            trail.grow(len(tail))
        tail, stopped = self._stops.feed(tail)
        text += tail
        reason = "stop" if stopped else reason
        text += self._stops.flush()
        logprobs = () if trail is None else trail.release(len(text), final=not self._stops.stopped)
        events: list[TextDelta | Finished] = []
        if text or self._pending:  # every generated token but the end token travels in exactly one delta
            events.append(TextDelta(text, tuple(self._pending), logprobs))
        cumulative = None if trail is None else trail.cumulative
        events.append(Finished(reason, self.prompt_tokens, self.generated, cumulative, self.cached_tokens))
        self._pending = []
        self.finished = True
        return events
