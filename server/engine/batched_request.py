"""`BatchedRequest`: one request on the batched path: its row of the shared KV cache, its prompt cursor, and its
own logits processing and sampling (`BatchedScheduler` runs the model; this turns each row of logits into the
request's next token and events).

The logits go through `LogitsProcessor` whenever a request asks for penalties, logit_bias, min_tokens or
logprobs (the same code and order as the Generator path), then `TokenSampler` picks the token.
"""

from __future__ import annotations

import numpy as np

from ortserve.server.engine.admission import Admitted
from ortserve.server.engine.generation import Finished, PromptLogprobs, TextDelta
from ortserve.server.engine.logits import LogitsProcessor
from ortserve.server.engine.runner_model import RunnerModel
from ortserve.server.engine.token_events import TokenEvents
from ortserve.server.engine.token_sampler import TokenSampler

Events = list[PromptLogprobs | TextDelta | Finished]


def fits_batched(admitted: Admitted) -> bool:
    """Whether the batched path serves this request. The others stay on og.Generator: images (the processor's
    inputs), grammars (their state lives in og's generator), prompt logprobs (every prompt position's logits),
    and a bare echo (nothing to generate)."""
    params = admitted.params
    return (
        admitted.images is None and params.guidance is None and params.prompt_logprobs is None and admitted.budget > 0
    )


class BatchedRequest:
    def __init__(self, rid: int, model: RunnerModel, admitted: Admitted):
        self.rid = rid
        self.model = model
        self.params = params = admitted.params
        self.ids = admitted.ids.astype(np.int64)
        self.prompt_tokens = len(self.ids)
        self.budget = admitted.budget
        self.started = admitted.started
        self.cursor = 0  # prompt tokens whose KV is in the row
        self.generated: list[int] = []  # tokens sampled; all but the last are in the row's KV
        self.done = False
        self.announced = False  # its first text has been sent (set by the scheduler)
        self.since = 0  # the scheduler's tick when it took its row
        self.events = TokenEvents(model, params, self.prompt_tokens, self.budget)
        own = params.processes_logits or params.repetition_penalty != 1.0 or params.min_tokens > 0
        self._logits = LogitsProcessor(params, model.vocab_size, model.eos_ids, self.ids, self.budget) if own else None
        self.sampler = TokenSampler(params)

    @property
    def prefilling(self) -> bool:
        return self.cursor < self.prompt_tokens

    @property
    def length(self) -> int:
        """Tokens whose KV the row holds."""
        return self.cursor + max(len(self.generated) - 1, 0)

    @property
    def next_input(self) -> int:
        """The token a decode step feeds (the last one sampled)."""
        return self.generated[-1]

    def close(self) -> None:
        """Dropped (the client left): nothing more is generated; the scheduler frees its row."""
        self.done = True

    def start_at(self, prefix: int) -> None:
        """The row already holds the prompt's first `prefix` tokens (from a kept row)."""
        self.cursor = prefix
        self.events.cached_tokens = prefix

    def chunk(self, size: int) -> np.ndarray:
        """The next prompt tokens to prefill (at most `size`)."""
        return self.ids[self.cursor : self.cursor + size]

    def prefilled(self, count: int, last_logits: np.ndarray) -> Events:
        """`count` more prompt tokens are in the row; at the prompt's end, `last_logits` give the first token."""
        self.cursor += count
        return [] if self.prefilling else self.take(last_logits)

    def take(self, logits: np.ndarray) -> Events:
        """Pick the next token from its logits (float32, the vocabulary's width); the events it makes."""
        processor = self._logits
        logprobs = None
        if processor is not None:
            logits = processor.process(logits)
            if self.params.logprobs is not None:
                logprobs = processor.logprobs(logits)
        token = self.sampler.pick(logits)
        if processor is not None:
            processor.observe(token)
        self.generated.append(token)
        events: Events = [*self.events.add(token, logprobs)]
        if self.events.finished:
            self.done = True
        return events

    def kept_tokens(self) -> np.ndarray:
        """The tokens whose KV the row holds (what a later prompt may start from)."""
        fed = np.asarray(self.generated[:-1], dtype=np.int64)
        return np.concatenate([self.ids[: self.cursor], fed]) if len(fed) else self.ids[: self.cursor].copy()
