"""Serving a model through onnxruntime-genai's `og.Engine` (continuous batching), inside a runner process.

A model built with paged attention (`use_paged_attention=true`, what `ortserve convert --device cuda`
builds) is Engine-only: `og.Generator` rejects it. Its genai_config then has `engine.dynamic_batching`,
which is how the runner picks this module (`uses_engine`). The Engine schedules every request itself:
all of them are handed over at once and each `Engine.run` advances them together, prompt chunks and
decode steps alike, in one batch on the GPU.

`EngineRunner` speaks the runner's protocol (it is a `runner.Runner` whose scheduling is the Engine's),
so the server side (`GenaiGenerator`) does not know which one it talks to. What the Engine path does
not do, a request learns as a 501 naming the field: logprobs, logit_bias, presence/frequency
penalties (our logits processing reads the logits, which the Engine does not expose), images, and on
an Engine without dynamic batching (any non-paged model, e.g. on the CPU) a `seed`. Stop strings are
matched here, across tokens, as on the Generator path. ORTSERVE_NUM_PARALLEL does not apply here:
the Engine queues and batches by itself (`max_batch_size`, 100 in CUDA builds).

Verified here on the CPU with a non-paged model, where the Engine batches statically (4 at a time, and
a request that arrives while a batch runs waits for the whole batch: why the CPU keeps the Generator
path); see tests/integration/test_paged_engine.py. NOT verified on a GPU: the dynamic-batching (paged,
CUDA) path is written from the 0.18 API and the H100 figures in the project notes, and has not run in
this form.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ortserve.server.engine import devices, ipc
from ortserve.server.engine.base import Finished, GenerationRequest, Prompt, SamplingParams, Started, TextDelta
from ortserve.server.engine.runner import Runner, find_fim_tokens
from ortserve.server.engine.stops import StopMatcher
from ortserve.server.errors import InvalidRequestError, NotSupportedError

_SEED_RANGE = 2**31 - 1
_TOKEN, _TURN_FINISHED, _FAILED = 1, 2, 8  # og.EngineEventFlags bits
# og.EngineErrorCode name -> (our error, what to tell the client); the rest are the Engine's own failures (500)
_ENGINE_ERRORS = {
    "CAPACITY_DEFERRED": ("OverloadedError", "the GPU's KV cache is full; try again shortly"),
    "EXECUTION_CAPACITY_EXCEEDED": ("OverloadedError", "the GPU's KV cache is full; try again shortly"),
    "RETRYABLE_EXECUTION": ("OverloadedError", "a retryable execution failure; try again"),
    "REQUEST_UNSERVICEABLE": ("InvalidRequestError", "the request needs more KV cache than this model has "
                              "(lower max_tokens or the prompt)"),
}


def engine_failure(code: str) -> ipc.Failure:
    """The failure a request gets for an Engine error code: 503 when it may pass later, 400 when it never
    fits, else 500."""
    error, reason = _ENGINE_ERRORS.get(code, ("BackendError", "the Engine failed"))
    return ipc.Failure(error, f"onnxruntime-genai's Engine could not serve this request: {reason} ({code}).")
_FINISH = {"EOS": "stop", "STOP_STRING": "stop", "MAX_GENERATED_TOKENS": "length", "MAX_SESSION_TOKENS": "length"}
GUIDANCE_PROBE = "q7x9z"  # as slots.GUIDANCE_PROBE: a grammar admitting only this; free decoding never writes it


def uses_engine(folder: Path) -> bool:
    """Whether the model must be served by og.Engine: the builder wrote `engine.dynamic_batching` (paged attention)."""
    try:
        genai = json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(genai.get("engine"), dict) and "dynamic_batching" in genai["engine"]


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


def turn_settings(params: SamplingParams, budget: int) -> list[tuple[str, tuple]]:
    """The `og.TurnOptions` calls for a request: (method, arguments), in order."""
    calls: list[tuple[str, tuple]] = [("set_max_generated_tokens", (budget,))]
    if params.temperature <= 0:
        calls.append(("set_do_sample", (False,)))
    else:
        calls += [("set_do_sample", (True,)), ("set_temperature", (float(params.temperature),)),
                  ("set_top_p", (float(params.top_p),)), ("set_top_k", (int(params.top_k),))]  # fmt: skip
        if params.seed is not None:
            calls.append(("set_seed", (params.seed % _SEED_RANGE,)))
    if params.repetition_penalty != 1.0:
        calls.append(("set_repetition_penalty", (float(params.repetition_penalty),)))
    if params.min_tokens:
        calls.append(("set_min_generated_tokens", (min(params.min_tokens, budget),)))
    if params.guidance is not None:
        calls.append(("set_guidance", (params.guidance.kind, params.guidance.data)))
    return calls


@dataclass
class EngineModel:
    """What every turn of an EngineRunner shares."""

    lm: Any  # slots.LoadedModel (tokenizers, eos ids, context)
    engine: Any  # og.Engine
    buffer: Any  # og.EngineEventBuffer, reused by every run
    dynamic: bool  # dynamic batching (paged attention); False: static batches


def load(folder: Path, options: ipc.RunnerOptions) -> tuple[EngineModel, ipc.RunnerInfo]:
    """Load a model for the Engine path (in the runner process); the RunnerInfo reports the device it runs on."""
    import onnxruntime_genai as og

    from ortserve.server.engine.detok import load_hf_tokenizer
    from ortserve.server.engine.slots import LoadedModel

    genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    dynamic = "dynamic_batching" in (genai.get("engine") or {})
    if dynamic and options.device != "cuda":
        raise NotSupportedError(
            f"this model was built with paged attention for CUDA and runs only with --device cuda "
            f"(asked: {options.device}); convert it again with --device {options.device} to run it there"
        )
    config = og.Config(str(folder))
    devices.configure(config, options.device, options.threads, og)
    model = og.Model(config)
    tokenizer, raw_tokenizer = og.Tokenizer(model), og.Tokenizer(model)
    raw_tokenizer.update_options(skip_special_tokens=False)
    spec = genai["model"]
    model_ctx = int(spec["context_length"])
    eos = spec.get("eos_token_id", [])
    eos_ids = frozenset(int(t) for t in (eos if isinstance(eos, list) else [eos])) | frozenset(tokenizer.eos_token_ids)
    special_text = {
        int(spec[key]): raw_tokenizer.decode([int(spec[key])])
        for key in ("bot_token_id", "eot_token_id")
        if isinstance(spec.get(key), int) and 0 <= spec[key] < int(spec["vocab_size"])
    }
    bos = spec.get("bos_token_id")
    lm = LoadedModel(
        model=model, tokenizer=tokenizer, raw_tokenizer=raw_tokenizer,
        context_length=min(options.num_ctx, model_ctx) if options.num_ctx else model_ctx,
        vocab_size=int(spec["vocab_size"]), eos_ids=eos_ids, bos_id=bos if isinstance(bos, int) and bos >= 0 else None,
        special_text=special_text, hf_tokenizer=load_hf_tokenizer(folder),
    )  # fmt: skip
    engine = og.Engine(model)
    capacity = max(1024, 4 * int(engine.get_capabilities().configured_max_batch_size or 0))
    em = EngineModel(lm, engine, engine.create_event_buffer(capacity), dynamic)
    lm.guidance_error = probe_guidance(em)  # also the Engine's warm-up (its first run is the slow one)
    running = str(getattr(model, "device_type", options.device)).lower()
    device = running if running in devices.PROVIDERS else options.device
    info = ipc.RunnerInfo(lm.context_length, find_fim_tokens(tokenizer.to_token_id), device, options.threads,
                          lm.guidance_error)  # fmt: skip
    return em, info


def probe_guidance(em: EngineModel) -> str | None:
    """None when the Engine enforces grammars (a regex admitting one improbable string), else why not."""
    import onnxruntime_genai as og

    lm = em.lm
    out: list[int] = []
    try:
        prompt = np.asarray(list(lm.tokenizer.encode("Hi")) or [lm.bos_id or 0], dtype=np.int32)
        request_options = og.RequestOptions()
        request_options.set_max_session_tokens(len(prompt) + len(GUIDANCE_PROBE) + 4)
        request = em.engine.create_request(options=request_options)
        turn = og.TurnOptions(request)
        turn.set_max_generated_tokens(len(GUIDANCE_PROBE) + 4)
        turn.set_do_sample(False)
        turn.set_guidance("regex", GUIDANCE_PROBE)
        request.begin_turn(prompt, turn)
        while em.engine.has_pending_requests():
            events = em.engine.run(em.buffer)
            for i in range(len(events)):
                event = events[i]
                if _flags(event) & _TOKEN and event.token is not None and int(event.token) not in lm.eos_ids:
                    out.append(int(event.token))
        request.close()
        text = lm.raw_tokenizer.decode(np.asarray(out, dtype=np.int32)) if out else ""
    except Exception as exc:  # noqa: BLE001 - whatever og raises, the answer is "not available"
        return f"onnxruntime-genai's Engine could not apply a grammar: {' '.join(str(exc).split())[:300]}"
    if text != GUIDANCE_PROBE:
        return "this onnxruntime-genai build ignores grammars (it was built without llguidance)"
    return None


def _flags(event: Any) -> int:
    flags = event.flags
    return int(getattr(flags, "value", flags))


class Turn:
    """One request on the Engine: its og.Request, and turning the Engine's token events into our events."""

    def __init__(self, rid: int, em: EngineModel, request: GenerationRequest):
        from ortserve.server.engine.prompts import encode_prompt
        from ortserve.server.engine.slots import grant_budget

        self.rid, self.em, self.params = rid, em, request.params
        lm = em.lm
        refused = unsupported(self.params, request.prompt, dynamic=em.dynamic)
        if refused is not None:
            param, why = refused
            raise NotSupportedError(
                f"'{param}' is not supported for this model: it is served by onnxruntime-genai's Engine "
                f"(continuous batching), which {why}.",
                param=param,
            )
        self.ids, prompt_text = encode_prompt(lm, request.prompt)
        self.prompt_tokens = len(self.ids)
        self.budget = grant_budget(self.prompt_tokens, self.params.max_tokens, lm.context_length,
                                   chat=request.prompt.messages is not None)  # fmt: skip
        guidance = self.params.guidance
        if guidance is not None:
            if self.params.min_tokens:
                raise InvalidRequestError("min_tokens cannot be combined with constrained output.", param="min_tokens")
            if lm.guidance_error is not None:
                raise NotSupportedError(
                    f"Constrained decoding is not available on this server ({lm.guidance_error}), so "
                    f"'{guidance.param}' cannot be honoured.",
                    param=guidance.param,
                )
        self.started = Started(self.prompt_tokens, self.budget, prompt_text)
        self.request: Any = None  # og.Request once started
        self.key = 0  # id() of that og.Request: how the Engine's events name their turn
        self.turn_id = 0
        self.generated = 0
        self.announced = False
        self.finished = False  # our Finished was sent
        self.done = False  # and the Engine is through with it
        self.prefilling = False  # the Engine prefills in its own steps; never "ours"
        self._stream = lm.detokenizer(self.params.keep_special)
        self._stops = StopMatcher(self.params.stop)
        self._pending: list[int] = []

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
            reason = " ".join(str(exc).removeprefix("Error creating grammar: ").split())[:1000]
            raise InvalidRequestError(f"Invalid value for '{guidance.param}': {reason}", param=guidance.param) from None

    def feed(self, event: Any) -> list[Any]:
        """Our events for one Engine event of this turn."""
        flags = _flags(event)
        if self.finished:  # stopped by a stop string or dropped: wait for the Engine to confirm
            if flags & (_TURN_FINISHED | _FAILED):
                self.close()
            return []
        if flags & _FAILED:
            self.close()
            return [engine_failure(getattr(event.error_code, "name", str(event.error_code)))]
        out: list[Any] = []
        if flags & _TOKEN and event.token is not None:
            out += self._token(int(event.token))
        if flags & _TURN_FINISHED:
            if not self.finished:
                reason = getattr(event.finish_reason, "name", str(event.finish_reason))
                if reason == "EOS":
                    self.generated += 1  # the end token, counted as the Generator path counts it
                out += self._finish(_FINISH.get(reason, "stop"))
            self.close()
        return out

    def _token(self, token: int) -> list[Any]:
        self.generated += 1
        if token in self.em.lm.eos_ids:
            return self._finish("stop")
        self._pending.append(token)
        text, stopped = self._stops.feed(self._stream.feed(token))
        if stopped:
            self.cancel()
            return self._finish("stop", text)
        if not text:
            return []
        delta = TextDelta(text, tuple(self._pending))
        self._pending = []
        return [delta]

    def _finish(self, reason: str, text: str = "") -> list[Any]:
        tail, stopped = self._stops.feed(self._stream.flush())
        text += tail + self._stops.flush()
        events: list[Any] = []
        if text or self._pending:
            events.append(TextDelta(text, tuple(self._pending)))
        final = "stop" if stopped else reason
        events.append(Finished(final, self.prompt_tokens, self.generated))  # type: ignore[arg-type]
        self._pending = []
        self.finished = True
        return events

    def cancel(self) -> None:
        """Stop generating (the Engine confirms with a finished event; until then the turn stays active)."""
        self.finished = True
        if self.request is None or not self.request.cancel_turn(self.turn_id):
            self.close()

    def close(self) -> None:
        if self.request is not None:
            self.request.close()
            self.request = None
        self.finished = self.done = True


class EngineRunner(Runner):
    """A runner whose scheduler is og.Engine: every accepted request goes to the Engine at once."""

    def __init__(self, em: EngineModel, options: ipc.RunnerOptions, requests: Any, events: Any):
        super().__init__(em.lm, options, requests, events)
        self.em = em
        self._turns: dict[int, Turn] = {}  # id(og.Request) -> its turn

    def _accept(self, rid: int, request: Any) -> None:
        try:
            turn = Turn(rid, self.em, request)
        except Exception as exc:  # a bad request fails alone
            self._post(rid, ipc.Failure.from_exception(exc))
            return
        self._post(rid, turn.started)
        self.waiting.append(turn)

    def _drop(self, rid: int) -> None:
        for turn in [t for t in (*self.active, *self.waiting) if t.rid == rid]:
            if turn in self.waiting:
                self.waiting.remove(turn)
                turn.close()
            else:
                turn.cancel()

    def stats(self) -> dict[str, Any]:
        capabilities = self.em.engine.get_capabilities()
        return {
            "pid": os.getpid(),
            "active": len(self.active),
            "queued": len(self.waiting),
            "prefilling": 0,
            "engine": "dynamic" if self.em.dynamic else "static",
            "max_batch": int(capabilities.configured_max_batch_size),
        }

    def _admit(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if turn.budget == 0:  # echo of the prompt alone: nothing to generate
                for event in turn._finish("length"):
                    self._post(turn.rid, event)
                continue
            try:
                turn.start()
            except Exception as exc:
                self._post(turn.rid, ipc.Failure.from_exception(exc))
                continue
            self.active.append(turn)
            self._turns[turn.key] = turn

    def _tick(self) -> None:
        if not self.active:
            return
        if not self.em.engine.has_pending_requests():  # never expected: fail what the Engine forgot, never hang
            for turn in list(self.active):
                if not turn.finished:
                    self._post(turn.rid, ipc.Failure("BackendError", "onnxruntime-genai's Engine dropped the request"))
                self._retire(turn)
            return
        events = self.em.engine.run(self.em.buffer)
        for i in range(len(events)):
            event = events[i]
            turn = self._turns.get(id(event.request))
            if turn is None:
                continue
            for item in turn.feed(event):
                if not isinstance(item, TextDelta) or not turn.announced:
                    turn.announced = True
                    self.urgent = True
                self.outbox.append((turn.rid, item))
            if turn.done:
                self._retire(turn)
        for turn in [t for t in self.active if t.done]:  # closed without a last event (cancel refused)
            self._retire(turn)

    def _retire(self, turn: Turn) -> None:
        if self._turns.get(turn.key) is turn:
            del self._turns[turn.key]
        if turn in self.active:
            self.active.remove(turn)
        turn.close()
