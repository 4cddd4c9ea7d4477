"""One request inside a runner: its prompt, its `og.Generator`, and how it advances one step at a time.

Imported only by the runner process (it imports onnxruntime-genai).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime_genai as og

from ortserve.server.engine.base import (
    Finished,
    GenerationRequest,
    Guidance,
    PromptLogprobs,
    SamplingParams,
    Started,
    TextDelta,
)
from ortserve.server.engine.detok import Detokenizer, GenaiStreamDecoder, IncrementalDecoder, TokenSpeller
from ortserve.server.engine.logits import LogitsProcessor, LogprobsTrail, PromptReader, entry
from ortserve.server.engine.prompts import encode_image_prompt, encode_prompt
from ortserve.server.engine.stops import StopMatcher
from ortserve.server.errors import ContextLengthError, InvalidRequestError, NotSupportedError

_SEED_RANGE = 2**31 - 1  # og takes a non-negative int32 seed; -1 means "pick one at random"
_GRAMMAR_CACHE = 256  # compiled-grammar verdicts kept per model (clients resend the same tools and schemas)
# The start-up check: a grammar that admits only this text. An unconstrained model never writes it by chance.
GUIDANCE_PROBE = "q7x9z"


@dataclass
class LoadedModel:
    """What every slot of a runner shares."""

    model: Any  # og.Model
    tokenizer: Any  # og.Tokenizer, special tokens skipped when decoding output
    raw_tokenizer: Any  # og.Tokenizer that keeps special tokens (echoing a prompt given as ids)
    context_length: int  # served context (num_ctx), <= the model's
    vocab_size: int
    eos_ids: frozenset[int]
    bos_id: int | None
    special_text: dict[int, str] = field(default_factory=dict)  # skipped tokens that must stay visible (<tool_call>)
    hf_tokenizer: Any = None  # tokenizers.Tokenizer from tokenizer.json: decodes output exactly as transformers
    guidance_error: str | None = None  # why grammars are not enforced (set by the start-up probe)
    grammar_errors: OrderedDict = field(default_factory=OrderedDict)  # (kind, data) -> compile error or None
    logits_output: str = "logits"  # the model's output name for logits (every position of a prefill chunk)
    speller: Any = None  # TokenSpeller: each token's text and bytes, for logprobs
    processor: Any = None  # og.MultiModalProcessor for models with a vision section (images in chats)
    model_type: str = ""  # onnxruntime-genai's model type (picks the image marker its processor reads)

    def __post_init__(self) -> None:
        if self.speller is None:
            self.speller = TokenSpeller(self.hf_tokenizer, self.raw_tokenizer.decode)

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled exactly `text`, if there is one."""
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer.token_to_id(text)
        found = int(self.tokenizer.to_token_id(text))
        return found if 0 <= found < self.vocab_size and self.raw_tokenizer.decode([found]) == text else None

    def detokenizer(self, keep_special: tuple[str, ...] = ()) -> Detokenizer:
        """`keep_special`: special tokens this request must see as text (tool-call markers)."""
        visible = {found: text for text in keep_special if (found := self.token_id(text)) is not None}
        if self.hf_tokenizer is not None:
            return IncrementalDecoder(self.hf_tokenizer, visible)
        # og's stream already spells tokens it does not skip (non-special added tokens): add only the others
        visible = {i: t for i, t in {**self.special_text, **visible}.items() if self.tokenizer.decode([i]) != t}
        return GenaiStreamDecoder(self.tokenizer.create_stream(), visible)

    def grammar_error(self, kind: str, data: str) -> str | None:
        """llguidance's complaint about a grammar, or None when it compiles (cached)."""
        key = (kind, data)
        if key in self.grammar_errors:
            self.grammar_errors.move_to_end(key)
            return self.grammar_errors[key]
        gp = og.GeneratorParams(self.model)
        gp.set_search_options(max_length=1)  # never run: creating the generator compiles the grammar
        try:
            gp.set_guidance(kind, data)
            og.Generator(self.model, gp)
            error = None
        except RuntimeError as exc:
            error = " ".join(str(exc).removeprefix("Error creating grammar: ").split())[:1000]
        self.grammar_errors[key] = error
        if len(self.grammar_errors) > _GRAMMAR_CACHE:
            self.grammar_errors.popitem(last=False)
        return error


def check_guidance(lm: LoadedModel, guidance: Guidance) -> None:
    """Raise the request's error when its grammar cannot be enforced, naming the field at fault."""
    if lm.guidance_error is not None:
        raise NotSupportedError(
            f"Constrained decoding is not available on this server ({lm.guidance_error}), so "
            f"'{guidance.param}' cannot be honoured.",
            param=guidance.param,
        )
    error = lm.grammar_error(guidance.kind, guidance.data)
    if error is None:
        return
    for part in guidance.parts:
        part_error = lm.grammar_error(part.kind, part.data)
        if part_error is not None:
            raise InvalidRequestError(f"Invalid schema for {part.label or part.param}: {part_error}", param=part.param)
    raise InvalidRequestError(f"Invalid value for '{guidance.param}': {error}", param=guidance.param)


def probe_guidance(lm: LoadedModel) -> str | None:
    """None when onnxruntime-genai enforces grammars; else why not.

    A build without llguidance only logs a warning and generates freely, so the probe
    generates under a regex that admits one improbable string and checks the output.
    """
    budget = len(GUIDANCE_PROBE) + 4
    try:
        prompt = list(lm.tokenizer.encode("Hi")) or [lm.bos_id or 0]
        gp = og.GeneratorParams(lm.model)
        gp.set_search_options(max_length=len(prompt) + budget, do_sample=False)
        gp.set_guidance("regex", GUIDANCE_PROBE)
        generator = og.Generator(lm.model, gp)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        out: list[int] = []
        while not generator.is_done() and len(out) < budget:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in lm.eos_ids:
                break
            out.append(token)
        text = lm.raw_tokenizer.decode(np.asarray(out, dtype=np.int32)) if out else ""
    except Exception as exc:  # noqa: BLE001 - whatever og raises, the answer is "not available"
        return f"onnxruntime-genai could not apply a grammar: {' '.join(str(exc).split())[:300]}"
    if text != GUIDANCE_PROBE:
        return "this onnxruntime-genai build ignores grammars (it was built without llguidance)"
    return None


def grant_budget(prompt_tokens: int, max_tokens: int | None, context_length: int, *, chat: bool) -> int:
    """Completion tokens granted, or ContextLengthError in OpenAI's words. 0: only read the prompt (echo)."""
    what, param = ("messages", "messages") if chat else ("prompt", "prompt")
    if max_tokens is not None and max_tokens < 0:
        raise InvalidRequestError("max_tokens must not be negative.", param="max_tokens")
    if max_tokens is None:
        if prompt_tokens < context_length:
            return context_length - prompt_tokens
        raise ContextLengthError(
            f"This model's maximum context length is {context_length} tokens. However, your {what} resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the {what}.",
            param=param,
        )
    if prompt_tokens + max_tokens > context_length:
        raise ContextLengthError(
            f"This model's maximum context length is {context_length} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {what}, {max_tokens} in the completion). "
            f"Please reduce the length of the {what} or completion.",
            param=param,
        )
    return max_tokens


def search_options(params: SamplingParams, prompt_tokens: int, budget: int) -> dict[str, Any]:
    """onnxruntime-genai's options; with our own logits processing, it applies no penalty of its own."""
    options: dict[str, Any] = {"max_length": prompt_tokens + budget}
    if not params.processes_logits:
        options["repetition_penalty"] = float(params.repetition_penalty)
        if params.min_tokens:
            options["min_length"] = prompt_tokens + min(params.min_tokens, budget)
    if params.temperature <= 0:
        return {**options, "do_sample": False}
    return {
        **options,
        "do_sample": True,
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(params.top_k),  # 0: no cut (og's own default would be the config's 50)
        "random_seed": -1 if params.seed is None else params.seed % _SEED_RANGE,
    }


class Slot:
    """A request's generation state. `step()` does one unit of work: a prefill chunk or one decode step."""

    def __init__(self, rid: int, lm: LoadedModel, request: GenerationRequest, prefill_chunk: int):
        self.rid = rid
        self.lm = lm
        self.params = request.params
        self._images: Any = None  # the processor's tensors, read in one set_inputs (not chunked)
        if request.prompt.images:
            if self.params.prompt_logprobs is not None:
                raise NotSupportedError("prompt_logprobs cannot be combined with images.", param="prompt_logprobs")
            self.ids, prompt_text, self._images = encode_image_prompt(lm, request.prompt)
        else:
            self.ids, prompt_text = encode_prompt(lm, request.prompt)
        self.prompt_tokens = len(self.ids)
        self.budget = grant_budget(
            self.prompt_tokens, self.params.max_tokens, lm.context_length, chat=request.prompt.messages is not None
        )
        if self.params.guidance is not None:
            if self.params.min_tokens:  # og would suppress the end of sequence the finished grammar demands
                raise InvalidRequestError("min_tokens cannot be combined with constrained output.", param="min_tokens")
            check_guidance(lm, self.params.guidance)
        bad = [t for t, _ in self.params.logit_bias if not 0 <= t < lm.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': token id {bad[0]} is not in this model's vocabulary "
                f"(ids 0 to {lm.vocab_size - 1}).",
                param="logit_bias",
            )
        self.started = Started(self.prompt_tokens, self.budget, prompt_text)
        self.prefill_chunk = prefill_chunk
        self.cursor = 0  # prompt tokens appended so far
        self.generated = 0
        self.done = False
        self.announced = False  # its first text has been sent (set by the runner)
        self.generator: Any = None
        self._stream = lm.detokenizer(self.params.keep_special)
        self._stops = StopMatcher(self.params.stop)
        self._pending: list[int] = []  # generated tokens not yet sent in a delta (text held back or empty)
        self._logits = (
            LogitsProcessor(self.params, lm.vocab_size, lm.eos_ids, self.ids, self.budget)
            if self.params.processes_logits
            else None
        )
        self._logprobs = LogprobsTrail() if self.params.logprobs is not None else None
        self._prompt_logprobs = None
        if self.params.prompt_logprobs is not None:
            self._prompt_logprobs = PromptReader(
                self.ids, self.params.prompt_logprobs, lm.vocab_size, lm.logits_output, lm.speller
            )

    @property
    def prefilling(self) -> bool:
        return self.cursor < self.prompt_tokens

    def start(self) -> None:
        """Allocate the generator (and its KV cache, sized prompt + budget)."""
        gp = og.GeneratorParams(self.lm.model)
        gp.set_search_options(**search_options(self.params, self.prompt_tokens, self.budget))
        if self.params.guidance is not None:
            gp.set_guidance(self.params.guidance.kind, self.params.guidance.data)
        self.generator = og.Generator(self.lm.model, gp)

    def close(self) -> None:
        self.generator = None
        self._images = None
        self.done = True

    def step(self) -> list[PromptLogprobs | TextDelta | Finished]:
        if self.prefilling:
            return self._prefill()
        if self.budget == 0:  # echo of the prompt alone: nothing to generate
            return self._finish("length")
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

    def _decode(self) -> list[TextDelta | Finished]:
        g = self.generator
        processor = self._logits
        logprobs = None
        if processor is not None:
            logits = processor.process(g.get_logits())
            if processor.changes_logits:
                g.set_logits(logits)
            if self._logprobs is not None:
                logprobs = processor.logprobs(logits)
        g.generate_next_token()
        token = int(g.get_next_tokens()[0])
        self.generated += 1
        if processor is not None:
            processor.observe(token)
        if logprobs is not None:
            self._logprobs.cumulative += float(logprobs[token])
        if token in self.lm.eos_ids:
            return self._finish("stop")
        self._pending.append(token)
        piece = self._stream.feed(token)
        if logprobs is not None:
            self._logprobs.add(entry(logprobs, token, self.params.logprobs or 0, self.lm.speller), len(piece))
        text, stopped = self._stops.feed(piece)
        if stopped:
            return self._finish("stop", text)
        if self.generated >= self.budget:
            return self._finish("length", text)
        if g.is_done():  # an end token og knows and we did not (kept as a safety net)
            return self._finish("stop", text)
        if not text:
            return []
        logprobs_out = () if self._logprobs is None else self._logprobs.release(len(text))
        delta = TextDelta(text, tuple(self._pending), logprobs_out)
        self._pending = []
        return [delta]

    def _finish(self, reason: str, text: str = "") -> list[TextDelta | Finished]:
        tail = self._stream.flush()  # bytes that never completed a character
        if self._logprobs is not None:
            self._logprobs.grow(len(tail))
        tail, stopped = self._stops.feed(tail)
        text += tail
        reason = "stop" if stopped else reason
        text += self._stops.flush()
        events: list[TextDelta | Finished] = []
        trail = self._logprobs
        logprobs = () if trail is None else trail.release(len(text), final=not self._stops.stopped)
        if text or self._pending:  # every generated token but the end token travels in exactly one delta
            events.append(TextDelta(text, tuple(self._pending), logprobs))
        cumulative = None if trail is None else trail.cumulative
        events.append(Finished(reason, self.prompt_tokens, self.generated, cumulative))  # type: ignore[arg-type]
        self.close()
        return events
