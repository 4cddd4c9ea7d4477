"""`EngineTurn`: one request on the og.Engine path, what that path refuses, and what its turns share
(`EngineModel`).

A turn hands its prompt to the Engine and turns the Engine's token events into our events through the
shared `TokenEvents` core (stop strings across tokens, the detokenizer, finish reasons). What the Engine
path does not do, a request learns as a 501 naming the field: logprobs, logit_bias, presence/frequency
penalties (our logits processing reads the logits, which the Engine does not expose), images, and on an
Engine without dynamic batching (any non-paged model, e.g. on the CPU) a `seed`.

Imported only by the runner process (onnxruntime-genai is imported when a turn starts).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from ortserve.server.engine import ipc
from ortserve.server.engine.generation import GenerationRequest, Prompt, SamplingParams, Started
from ortserve.server.engine.guidance import grammar_reason, require_guidance
from ortserve.server.engine.prompts import grant_budget, read_prompt
from ortserve.server.engine.runner_model import RunnerModel
from ortserve.server.engine.sampling import turn_settings
from ortserve.server.engine.token_events import TokenEvents
from ortserve.server.errors import InvalidRequestError, NotSupportedError

TOKEN, TURN_FINISHED, FAILED = 1, 2, 8  # og.EngineEventFlags bits
# og.EngineErrorCode name -> (our error, what to tell the client); the rest are the Engine's own failures (500)
_ENGINE_ERRORS = {
    "CAPACITY_DEFERRED": ("OverloadedError", "the GPU's KV cache is full; try again shortly"),
    "EXECUTION_CAPACITY_EXCEEDED": ("OverloadedError", "the GPU's KV cache is full; try again shortly"),
    "RETRYABLE_EXECUTION": ("OverloadedError", "a retryable execution failure; try again"),
    "REQUEST_UNSERVICEABLE": (
        "InvalidRequestError",
        "the request needs more KV cache than this model has (lower max_tokens or the prompt)",
    ),
}
_FINISH: dict[str, Literal["stop", "length"]] = {
    "EOS": "stop",
    "STOP_STRING": "stop",
    "MAX_GENERATED_TOKENS": "length",
    "MAX_SESSION_TOKENS": "length",
}


def engine_failure(code: str) -> ipc.Failure:
    """The failure a request gets for an Engine error code: 503 when it may pass later, 400 when it never
    fits, else 500."""
    error, reason = _ENGINE_ERRORS.get(code, ("BackendError", "the Engine failed"))
    return ipc.Failure(error, f"onnxruntime-genai's Engine could not serve this request: {reason} ({code}).")


def event_flags(event: Any) -> int:
    flags = event.flags
    return int(getattr(flags, "value", flags))


def unsupported(params: SamplingParams, prompt: Prompt, *, dynamic: bool) -> tuple[str, str] | None:
    """(param, why) for the first request field the Engine path cannot honour; None when it can run."""
    if prompt.images:
        return "messages", "serves text-only decoders here (images need the Generator path)"
    hidden = "does not expose the logits that this needs"
    checks = (
        ("logprobs", params.logprobs is not None or params.prompt_logprobs is not None),
        ("logit_bias", bool(params.logit_bias)),
        ("presence_penalty", bool(params.presence_penalty)),
        ("frequency_penalty", bool(params.frequency_penalty)),
    )
    for param, asked in checks:
        if asked:
            return param, hidden
    if params.seed is not None and params.temperature > 0 and not dynamic:
        return "seed", "takes a per-request seed only with dynamic batching (a paged-attention CUDA model)"
    return None


@dataclass
class EngineModel:
    """What every turn of an EngineScheduler shares."""

    model: RunnerModel  # tokenizers, end tokens, context
    engine: Any  # og.Engine
    buffer: Any  # og.EngineEventBuffer, reused by every run
    dynamic: bool  # dynamic batching (paged attention); False: static batches


class EngineTurn:
    """One request on the Engine: its og.Request, and the Engine's token events fed to its `TokenEvents`."""

    def __init__(self, rid: int, em: EngineModel, request: GenerationRequest):
        self.rid, self.em, self.params = rid, em, request.params
        model = em.model
        refused = unsupported(self.params, request.prompt, dynamic=em.dynamic)
        if refused is not None:
            param, why = refused
            raise NotSupportedError(
                f"'{param}' is not supported for this model: it is served by onnxruntime-genai's Engine "
                f"(continuous batching), which {why}.",
                param=param,
            )
        self.ids, prompt_text, _ = read_prompt(model, request.prompt, self.params)
        self.prompt_tokens = len(self.ids)
        self.budget = grant_budget(
            self.prompt_tokens, self.params.max_tokens, model.context_length, chat=request.prompt.messages is not None
        )
        require_guidance(model, self.params)  # a grammar that does not compile fails when the turn begins
        if self.params.guidance is not None:
            self.params = replace(self.params, guidance=self.params.guidance.for_prompt(prompt_text))
        self.started = Started(self.prompt_tokens, self.budget, prompt_text)
        self.request: Any = None  # og.Request once started
        self.key = 0  # id() of that og.Request: how the Engine's events name their turn
        self.turn_id = 0
        self.announced = False
        self.cancelled = False  # stopped early (a stop string, or the client left); the Engine confirms
        self.done = False  # the Engine is through with it (our Finished may come earlier: events.finished)
        self.prefilling = False  # the Engine prefills in its own steps; never "ours"
        self.events = TokenEvents(model, self.params, self.prompt_tokens, self.budget)

    @property
    def finished(self) -> bool:
        """Our Finished was produced, or the client left: the Engine's later tokens are dropped."""
        return self.events.finished or self.cancelled or self.done

    def start(self) -> None:
        """Hand the turn to the Engine (a bad grammar is this request's 400)."""
        import onnxruntime_genai as og

        request_options = og.RequestOptions()
        request_options.set_max_session_tokens(self.prompt_tokens + self.budget)
        self.request = self.em.engine.create_request(options=request_options)
        self.key = id(self.request)
        options = og.TurnOptions(self.request)
        for method, args in turn_settings(self.params, self.budget):
            getattr(options, method)(*args)
        try:
            self.turn_id = self.request.begin_turn(self.ids, options)
        except RuntimeError as exc:
            self.close()
            guidance = self.params.guidance
            if guidance is None:
                raise
            reason = grammar_reason(exc)
            raise InvalidRequestError(f"Invalid value for '{guidance.param}': {reason}", param=guidance.param) from None

    def feed(self, event: Any) -> list[Any]:
        """Our events for one Engine event of this turn."""
        flags = event_flags(event)
        if self.finished:  # stopped by a stop string or dropped: wait for the Engine to confirm
            if flags & (TURN_FINISHED | FAILED):
                self.close()
            return []
        if flags & FAILED:
            self.close()
            return [engine_failure(getattr(event.error_code, "name", str(event.error_code)))]
        out: list[Any] = []
        if flags & TOKEN and event.token is not None:
            out += self.events.add(int(event.token))
            # ended on our side (a stop string, an end token only the tokenizer lists, the budget) while the
            # Engine goes on: cancel its turn, or the GPU keeps generating for nobody
            if self.events.finished and not flags & TURN_FINISHED:
                self.cancel()
        if flags & TURN_FINISHED:
            if not self.events.finished:
                reason = getattr(event.finish_reason, "name", str(event.finish_reason))
                if reason == "EOS":  # the end token, counted as the Generator path counts it
                    out += self.events.end_of_sequence()
                else:
                    out += self.events.finish(_FINISH.get(reason, "stop"))
            self.close()
        return out

    def cancel(self) -> None:
        """Stop generating (the Engine confirms with a finished event; until then the turn stays active)."""
        self.cancelled = True
        if self.request is None or not self.request.cancel_turn(self.turn_id):
            self.close()

    def close(self) -> None:
        if self.request is not None:
            self.request.close()
            self.request = None
        self.done = True
