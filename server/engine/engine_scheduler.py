"""`EngineScheduler`: serving a model through onnxruntime-genai's `og.Engine` (continuous batching), inside a
runner process, and its loader (an `EngineModel`: the shared `RunnerModel` plus the og.Engine).

A model built with paged attention (`use_paged_attention=true`, what `ortserve convert --device cuda`
builds) is Engine-only: `og.Generator` rejects it. Its genai_config then has `engine.dynamic_batching`,
which is how runner_main picks this scheduler (`uses_engine`). The Engine schedules every request itself:
all of them are handed over at once and each `Engine.run` advances them together, prompt chunks and
decode steps alike, in one batch on the GPU. The server's `parallel` setting does not apply here: the
Engine queues and batches by itself (`max_batch_size`, 100 in CUDA builds). What a request may ask on
this path, and how its tokens become our events: engine_turn.py.

Verified here on the CPU with a non-paged model, where the Engine batches statically (4 at a time, and
a request that arrives while a batch runs waits for the whole batch: why the CPU keeps the Generator
path); see tests/integration/test_paged_engine.py. NOT verified on a GPU: the dynamic-batching (paged,
CUDA) path is written from the 0.18 API and the H100 figures in the project notes, and has not run in
this form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ortserve.server.engine import devices, ipc
from ortserve.server.engine.engine_turn import TOKEN, EngineModel, EngineTurn, event_flags
from ortserve.server.engine.guidance import probe_guidance
from ortserve.server.engine.runner_loop import RunnerLoop
from ortserve.server.engine.runner_model import load_runner_model, read_genai_config
from ortserve.server.errors import NotSupportedError
from ortserve.server.gpu_memory import engine_overlay


def uses_engine(folder: Path) -> bool:
    """Whether the model must be served by og.Engine: the builder wrote `engine.dynamic_batching` (paged attention)."""
    try:
        genai = read_genai_config(folder)
    except (OSError, ValueError):
        return False
    return isinstance(genai.get("engine"), dict) and "dynamic_batching" in genai["engine"]


def load(folder: Path, options: ipc.RunnerOptions) -> tuple[EngineModel, ipc.RunnerInfo]:
    """Load a model for the Engine path (in the runner process); the RunnerInfo reports the device it runs on."""
    import onnxruntime_genai as og

    genai = read_genai_config(folder)
    dynamic = "dynamic_batching" in (genai.get("engine") or {})
    if dynamic and options.device != "cuda":
        raise NotSupportedError(
            f"this model was built with paged attention for CUDA and runs only with --device cuda "
            f"(asked: {options.device}); convert it again with --device {options.device} to run it there"
        )
    # the paged KV pool: the server's share of the GPU budget, else the builder's factor of the free memory
    overlay = engine_overlay(genai, options.kv_cache_bytes) if dynamic else None
    model = load_runner_model(folder, options, overlay=overlay)
    engine = og.Engine(model.og_model)
    capabilities = engine.get_capabilities()
    model.context_length = session_context(model.context_length, capabilities)
    capacity = max(1024, 4 * int(capabilities.configured_max_batch_size or 0))
    em = EngineModel(model, engine, engine.create_event_buffer(capacity), dynamic)
    # also the Engine's warm-up (its first run is the slow one)
    model.guidance_error = probe_guidance(
        model, lambda *args: generate_greedy(em, *args), engine="onnxruntime-genai's Engine"
    )
    running = str(getattr(model.og_model, "device_type", options.device)).lower()
    return em, model.info(options, running if running in devices.PROVIDERS else options.device)


def session_context(context: int, capabilities: Any) -> int:
    """The context a request may use on this Engine: the served context, or less when the Engine says a
    request can be no longer (`max_request_length`: its KV pool or block table holds fewer tokens; 0 on an
    Engine that sets no bound, as the CPU's static one). A request's session is prompt + budget within it
    (engine_turn.py), so one that would outgrow the pool is told so up front (400) or ends as "length",
    never fails half-way as REQUEST_UNSERVICEABLE.

    How the paged Engine allocates (read in onnxruntime-genai's source at 0.16-dev, src/engine/scheduler.cpp
    and paged_key_value_cache.cpp; 0.18's library carries the same planner's symbols): the KV blocks a
    request holds follow its live sequence (the whole prompt when it is admitted, then one block per
    `block_size` tokens generated), not `max_session_tokens`, so a session sized to the whole context
    reserves nothing more than a short one; requests that do not fit now wait in the Engine. Not yet seen
    on a GPU."""
    longest = int(getattr(capabilities, "max_request_length", 0) or 0)
    return min(context, longest) if longest > 0 else context


def generate_greedy(em: EngineModel, prompt: np.ndarray, most: int, grammar: tuple[str, str]) -> list[int]:
    """Up to `most` greedy tokens under `grammar` (kind, data), as one turn on the Engine."""
    import onnxruntime_genai as og

    request_options = og.RequestOptions()
    request_options.set_max_session_tokens(len(prompt) + most)
    request = em.engine.create_request(options=request_options)
    out: list[int] = []
    try:  # a grammar og refuses must not leave a pending request behind (it would defeat _tick's check)
        turn = og.TurnOptions(request)
        turn.set_max_generated_tokens(most)
        turn.set_do_sample(False)
        turn.set_guidance(*grammar)
        request.begin_turn(prompt, turn)
        while em.engine.has_pending_requests():
            events = em.engine.run(em.buffer)
            for i in range(len(events)):
                event = events[i]
                if event_flags(event) & TOKEN and event.token is not None:
                    out.append(int(event.token))
    finally:
        request.close()
    return out


class EngineScheduler(RunnerLoop):
    """A runner whose scheduler is og.Engine: every accepted request goes to the Engine at once."""

    def __init__(self, em: EngineModel, options: ipc.RunnerOptions, requests: Any, events: Any):
        super().__init__(options, requests, events)
        self.em = em
        self._turns: dict[int, EngineTurn] = {}  # id(og.Request) -> its turn

    def _new_request(self, rid: int, request: Any) -> EngineTurn:
        return EngineTurn(rid, self.em, request)

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
            **super().stats(),
            "prefilling": 0,
            "engine": "dynamic" if self.em.dynamic else "static",
            "max_batch": int(capabilities.configured_max_batch_size),
        }

    def _has_room(self) -> bool:
        return True  # the Engine queues and batches by itself

    def _start(self, turn: EngineTurn) -> bool:
        if turn.budget == 0:  # echo of the prompt alone: nothing to generate
            for event in turn.events.finish("length"):
                self._post(turn.rid, event)
            return False
        turn.start()
        self._turns[turn.key] = turn
        return True

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
            self._emit(turn, turn.feed(event))
            if turn.done:
                self._retire(turn)
        for turn in [t for t in self.active if t.done]:  # closed without a last event (cancel refused)
            self._retire(turn)

    def _retire(self, turn: EngineTurn) -> None:
        if self._turns.get(turn.key) is turn:
            del self._turns[turn.key]
        if turn in self.active:
            self.active.remove(turn)
        turn.close()
