"""`GeneratorRequest`: one request on the Generator path, with its own `og.Generator`, advanced one step
at a time (a prefill chunk or one decode step) by `GeneratorScheduler`.

Imported only by the runner process (it imports onnxruntime-genai).
"""

from __future__ import annotations

from typing import Any

import onnxruntime_genai as og

from ortserve.server.engine.generation import Finished, GenerationRequest, PromptLogprobs, Started, TextDelta
from ortserve.server.engine.guidance import check_grammar, require_guidance
from ortserve.server.engine.logits import LogitsProcessor, PromptReader
from ortserve.server.engine.prompts import grant_budget, read_prompt
from ortserve.server.engine.runner_model import RunnerModel
from ortserve.server.engine.sampling import search_options
from ortserve.server.engine.token_events import TokenEvents
from ortserve.server.errors import InvalidRequestError


class GeneratorRequest:
    """A request's generation state. `step()` does one unit of work: a prefill chunk or one decode step."""

    def __init__(self, rid: int, model: RunnerModel, request: GenerationRequest, prefill_chunk: int):
        self.rid = rid
        self.model = model
        self.params = params = request.params
        # with images: the processor's tensors, read in one set_inputs (not chunked)
        self.ids, prompt_text, self._images = read_prompt(model, request.prompt, params)
        self.prompt_tokens = len(self.ids)
        self.budget = grant_budget(
            self.prompt_tokens, params.max_tokens, model.context_length, chat=request.prompt.messages is not None
        )
        require_guidance(model, params)
        if params.guidance is not None:
            check_grammar(model, params.guidance)
        bad = [t for t, _ in params.logit_bias if not 0 <= t < model.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': token id {bad[0]} is not in this model's vocabulary "
                f"(ids 0 to {model.vocab_size - 1}).",
                param="logit_bias",
            )
        self.started = Started(self.prompt_tokens, self.budget, prompt_text)
        self.prefill_chunk = prefill_chunk
        self.cursor = 0  # prompt tokens appended so far
        self.done = False
        self.announced = False  # its first text has been sent (set by the scheduler)
        self.generator: Any = None
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

    def start(self) -> None:
        """Allocate the generator (and its KV cache, sized prompt + budget)."""
        gp = og.GeneratorParams(self.model.og_model)
        gp.set_search_options(**search_options(self.params, self.prompt_tokens, self.budget))
        if self.params.guidance is not None:
            gp.set_guidance(self.params.guidance.kind, self.params.guidance.data)
        self.generator = og.Generator(self.model.og_model, gp)

    def close(self) -> None:
        self.generator = None
        self._images = None
        self.done = True

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
            self.close()
        out: list[PromptLogprobs | TextDelta | Finished] = [*events]
        return out
