"""`GeneratorRequest`: one request on the Generator path, with its own `og.Generator`, advanced one step
at a time (a prefill chunk or one decode step) by `GeneratorScheduler`.

With the runner's `PromptCache`, a request starts from a kept generator that already holds a prefix of its
prompt (rewound to that prefix; only the rest is prefilled), and a finished request leaves its generator
there. Requests that skip the cache: with images (the processor's inputs are read in one piece), with a
grammar (the grammar's state lives in the generator and is not rewound), sampled with a seed (the seed
must start a fresh random stream), and on a model with a vision section. A request asking for
prompt_logprobs is not served from the cache (the prefix's logits are not kept), but leaves its generator.

Imported only by the runner process (it imports onnxruntime-genai).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime_genai as og

from ortserve.server.engine.admission import Admitted
from ortserve.server.engine.generation import Finished, PromptLogprobs, TextDelta
from ortserve.server.engine.logits import LogitsProcessor, PromptReader
from ortserve.server.engine.prompt_cache import CachedPrompt, Outgrown, PromptCache, PromptHit, options_key
from ortserve.server.engine.runner_model import RunnerModel
from ortserve.server.engine.sampling import search_options
from ortserve.server.engine.token_events import TokenEvents

# A generator that may be kept gets this many times the room its request needs (up to the served context), so
# that a chat's next turns, each longer than the last, still fit in it; once a chat outgrows it, the next one
# gets the whole served context. Not the whole context at once: the KV is allocated (and zeroed) when the
# generator is made, measured on the SmolLM2-135M shape (46 KB of KV per token): 2,048 tokens of room cost
# 94 MB and ~100 ms to make on a loaded 2-core machine, 400 tokens 19 MB and ~27 ms.
ROOM_FACTOR = 2


class GeneratorRequest:
    """A request's generation state. `step()` does one unit of work: a prefill chunk or one decode step."""

    def __init__(
        self,
        rid: int,
        model: RunnerModel,
        admitted: Admitted,
        prefill_chunk: int,
        cache: PromptCache | None = None,
    ):
        self.rid = rid
        self.model = model
        self.params = params = admitted.params
        # with images: the processor's tensors, read in one set_inputs (not chunked)
        self.ids, self._images = admitted.ids, admitted.images
        self.prompt_tokens = len(self.ids)
        self.budget = admitted.budget
        self.started = admitted.started
        self.prefill_chunk = prefill_chunk
        self.cursor = 0  # prompt tokens appended so far
        self.done = False
        self.announced = False  # its first text has been sent (set by the scheduler)
        self.generator: Any = None
        self.max_length = 0  # the generator's room in tokens
        self._options: dict[str, Any] = {}  # its search options
        self.cache = cache if cache is not None and cache.enabled and self._cacheable(model, params) else None
        self.events = TokenEvents(model, params, self.prompt_tokens, self.budget)
        self._logits = (
            LogitsProcessor(params, model.vocab_size, model.eos_ids, self.ids, self.budget)
            if params.processes_logits
            else None
        )
        self._prompt_logprobs = None
        if params.prompt_logprobs is not None:
            self._prompt_logprobs = PromptReader(
                self.ids, params.prompt_logprobs, model.vocab_size, model.logits_output, model.speller
            )

    @property
    def prefilling(self) -> bool:
        return self.cursor < self.prompt_tokens

    @staticmethod
    def _cacheable(model: RunnerModel, params: Any) -> bool:
        """Whether this request may use the prompt cache at all (see the module's docstring)."""
        seeded = params.temperature > 0 and params.seed is not None
        return model.processor is None and params.guidance is None and not seeded

    def start(self) -> None:
        """Take a kept generator holding a prefix of the prompt, or allocate one (and its KV cache, sized prompt
        + budget; with the prompt cache, ROOM_FACTOR times that, or the served context for a chat that outgrew
        its kept generator, so that its later turns fit)."""
        options = self._options = search_options(self.params, self.prompt_tokens, self.budget)
        if self.cache is not None and self._images is None:
            hit = self.cache.take(self.ids, options) if self.params.prompt_logprobs is None else None
            if isinstance(hit, PromptHit):
                hit.generator.rewind_to(hit.prefix)
                self.generator, self.cursor, self.events.cached_tokens = hit.generator, hit.prefix, hit.prefix
                self.max_length = hit.max_length
                return
            # a chat that outgrew its generator gets the whole context; any other request twice its need
            room = self.model.context_length if isinstance(hit, Outgrown) else ROOM_FACTOR * int(options["max_length"])
            options["max_length"] = min(self.model.context_length, room)
        gp = og.GeneratorParams(self.model.og())
        gp.set_search_options(**options)
        if self.params.guidance is not None:
            gp.set_guidance(self.params.guidance.kind, self.params.guidance.data)
        self.generator = og.Generator(self.model.og(), gp)
        self.max_length = int(options["max_length"])

    def close(self) -> None:
        self.generator = None
        self._images = None
        self.done = True

    def _keep(self) -> None:
        """Leave the finished generator in the prompt cache, under the tokens whose KV it holds."""
        if self.cache is None:
            return
        sequence = np.asarray(self.generator.get_sequence(0), dtype=np.int32)
        # the last generated token was sampled but never read: its KV is not there
        tokens = sequence[:-1] if self.events.generated else sequence
        nbytes = self.max_length * self.model.kv_bytes_per_token
        self.cache.keep(CachedPrompt(self.generator, tokens, options_key(self._options), self.max_length, nbytes))

    def step(self) -> list[PromptLogprobs | TextDelta | Finished]:
        if self.prefilling:
            return self._prefill()
        if self.budget == 0:  # echo of the prompt alone: nothing to generate
            return self._ended(self.events.finish("length"))
        return self._decode()

    def _prefill(self) -> list[PromptLogprobs | TextDelta | Finished]:
        if self._images is not None:  # the vision encoder, the embeddings and the whole prompt, at once
            self.generator.set_inputs(self._images)
            self._images = None
            self.cursor = self.prompt_tokens
            return []
        start, end = self.cursor, min(self.cursor + self.prefill_chunk, self.prompt_tokens)
        self.generator.append_tokens(self.ids[start:end])
        reader = self._prompt_logprobs
        if reader is not None and not reader.read(self.generator, start, end):
            # the model gave the logits of the chunk's last position only: read the rest one token at a time
            self.generator.rewind_to(start)
            self.prefill_chunk = 1
            return []
        self.cursor = end
        if reader is not None and not self.prefilling:
            return [PromptLogprobs(tuple(reader.entries))]
        return []

    def _decode(self) -> list[PromptLogprobs | TextDelta | Finished]:
        g = self.generator
        processor = self._logits
        logprobs = None
        if processor is not None:
            logits = processor.process(g.get_logits())
            if processor.changes_logits:
                g.set_logits(logits)
            if self.params.logprobs is not None:
                logprobs = processor.logprobs(logits)
        g.generate_next_token()
        token = int(g.get_next_tokens()[0])
        if processor is not None:
            processor.observe(token)
        events = self.events.add(token, logprobs)
        if not self.events.finished and g.is_done():  # an end token og knows and we did not (a safety net)
            events += self.events.finish("stop")
        return self._ended(events)

    def _ended(self, events: list[TextDelta | Finished]) -> list[PromptLogprobs | TextDelta | Finished]:
        if self.events.finished:
            if self.cache is not None and self.generator is not None:
                self._keep()
            self.close()
        out: list[PromptLogprobs | TextDelta | Finished] = [*events]
        return out
