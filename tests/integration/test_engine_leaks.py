"""What the og.Engine runner must release when a turn ends on our side or the start-up probe fails
(server/engine/engine_turn.py, engine_scheduler.py; issue #19 item 5), on the real tiny model's tokenizers
and end tokens (`RunnerModel`) with a fake og.Engine: the paged Engine these paths serve runs only on a
GPU, so `FakeEngine` and `FakeRequest` implement just the calls our code makes (create_request,
has_pending_requests, run; begin_turn, cancel_turn, close) and record them.

A turn is attached to its request as `EngineTurn.start` does (request, key, turn id): start itself passes
the request to og.TurnOptions, which accepts only a request og made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from ortserve.server.engine import engine_scheduler, ipc
from ortserve.server.engine.engine_turn import TOKEN, TURN_FINISHED, EngineModel, EngineTurn
from ortserve.server.engine.generation import Finished, GenerationRequest, Prompt, SamplingParams
from ortserve.server.engine.guidance import probe_guidance
from ortserve.server.engine.runner_model import RunnerModel, load_runner_model

pytestmark = pytest.mark.slow


class FakeRequest:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.cancelled: list[int] = []
        self.closed = 0
        self.cancel_accepted = True  # False: og's answer once the turn has already ended

    def begin_turn(self, ids: Any, options: Any) -> int:
        return 1

    def cancel_turn(self, turn_id: int) -> bool:
        self.cancelled.append(turn_id)
        return self.cancel_accepted

    def close(self) -> None:
        self.closed += 1


class FakeEngine:
    """og.Engine's calls that the runner makes; a request is pending until closed, as og's are."""

    def __init__(self):
        self.requests: list[FakeRequest] = []

    def create_request(self, options: Any = None) -> FakeRequest:
        self.requests.append(FakeRequest(self))
        return self.requests[-1]

    def has_pending_requests(self) -> bool:
        return any(not r.closed for r in self.requests)

    def run(self, buffer: Any) -> list:
        return []


@dataclass
class Event:
    """og.EngineEvent's fields that EngineTurn.feed reads."""

    request: Any
    flags: int
    token: int | None = None
    finish_reason: str = "EOS"
    error_code: str = ""


@pytest.fixture(scope="module")
def model(chat_store) -> RunnerModel:
    options = ipc.RunnerOptions(num_ctx=None, device="cpu", threads=2, parallel=4, prefill_chunk=128)
    return load_runner_model(chat_store.get("tiny-qwen-int4").folder, options)


def started_turn(model: RunnerModel, engine: FakeEngine, **params) -> tuple[EngineTurn, FakeRequest]:
    em = EngineModel(model, engine, buffer=None, dynamic=True)
    turn = EngineTurn(1, em, GenerationRequest("r", Prompt(text="hello"), SamplingParams(temperature=0, **params)))
    request = engine.create_request()
    turn.request, turn.key, turn.turn_id = request, id(request), 7  # what start() sets
    return turn, request


def test_a_failing_probe_closes_its_request_so_none_is_left_pending(model):
    """Any exception between create_request and the end of the probe (here og.TurnOptions refusing a
    request og did not make; on a GPU a grammar og refuses) must not leave a pending request behind: the
    scheduler's `_tick` takes "no pending requests while turns are active" to mean the Engine dropped them."""
    engine = FakeEngine()
    em = EngineModel(model, engine, buffer=None, dynamic=True)
    reason = probe_guidance(model, lambda *args: engine_scheduler.generate_greedy(em, *args), engine="the Engine")
    assert reason is not None and reason.startswith("the Engine could not apply a grammar")
    assert [r.closed for r in engine.requests] == [1]
    assert not engine.has_pending_requests()


def test_an_end_token_that_the_engine_does_not_end_on_cancels_its_turn(model):
    """Our end tokens include the tokenizer's list, which the Engine does not stop at: when one ends our side,
    the Engine's turn is cancelled (else the GPU goes on generating for nobody) and the request is closed
    once the Engine confirms."""
    engine = FakeEngine()
    turn, request = started_turn(model, engine, max_tokens=8)
    end = min(model.eos_ids)
    out = turn.feed(Event(request, TOKEN, end))
    assert isinstance(out[-1], Finished) and out[-1].finish_reason == "stop"
    assert request.cancelled == [7] and not request.closed and not turn.done  # until the Engine confirms
    assert turn.feed(Event(request, TOKEN, end)) == []  # a token already on its way is dropped
    assert turn.feed(Event(request, TURN_FINISHED, finish_reason="CANCELLED")) == []
    assert request.closed == 1 and turn.done and not engine.has_pending_requests()


def test_the_budget_ending_our_side_cancels_the_engine_turn_too(model):
    engine = FakeEngine()
    turn, request = started_turn(model, engine, max_tokens=2)
    word = next(t for t in model.tokenizer.encode(" hello") if t not in model.eos_ids)
    turn.feed(Event(request, TOKEN, word))
    assert not turn.finished and request.cancelled == []
    out = turn.feed(Event(request, TOKEN, word))
    assert isinstance(out[-1], Finished) and out[-1].finish_reason == "length" and request.cancelled == [7]


def test_a_cancel_the_engine_refuses_closes_the_request_at_once(model):
    """og refuses to cancel a turn that has already ended: then no confirming event comes, so the request is
    closed now, and the scheduler retires the turn (it is `done`)."""
    engine = FakeEngine()
    turn, request = started_turn(model, engine, max_tokens=8)
    request.cancel_accepted = False
    turn.feed(Event(request, TOKEN, min(model.eos_ids)))
    assert request.cancelled == [7] and request.closed == 1 and turn.done
    assert not engine.has_pending_requests()
