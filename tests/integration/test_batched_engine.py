"""The batched decoder against og.Generator (tiny random Llama, fp32, each in its runner process).

Requests of different prompt lengths and budgets, arriving at different moments, step together in one
onnxruntime call per token, join and leave rows, and reuse kept rows: each must still give exactly the tokens
it gives alone on an og.Generator (greedy, fp32). Then the KV budget: rows give way to a long one.
"""

from __future__ import annotations

import asyncio
import threading
from multiprocessing import Pipe

import numpy as np
import pytest

from ortserve.server.engine import batched_scheduler, ipc, load_generator
from ortserve.server.engine.generation import (
    Finished,
    GenerationRequest,
    Guidance,
    Prompt,
    SamplingParams,
    TextDelta,
)
from tests.integration.generation import ids_of, run

pytestmark = pytest.mark.slow

WORDS = "the quick brown fox jumps over a lazy dog while rain falls on Paris and Lyon".split()


def prompt(i: int) -> str:
    """Prompts sharing a preamble (a kept row serves its prefix to the others), then of different lengths."""
    return "Answer in plain words, briefly and kindly. " * 3 + " ".join(
        WORDS[(i * 7 + k) % len(WORDS)] for k in range(3 + 11 * i)
    )


def request(i: int, **params) -> GenerationRequest:
    tokens = 5 + 9 * (i % 4)  # rows finish at different steps: the last row moves into a freed one
    defaults = {"temperature": 0, "max_tokens": tokens, "min_tokens": tokens}
    return GenerationRequest(f"r{i}", Prompt(text=prompt(i)), SamplingParams(**{**defaults, **params}))


@pytest.fixture(scope="module")
async def batched(chat_store):
    gen = await load_generator(chat_store.get("tiny-llama"), prefill_chunk=16, parallel=4)
    yield gen
    await gen.close()


@pytest.fixture(scope="module")
async def generator(chat_store):
    gen = await load_generator(chat_store.get("tiny-llama"), batched=False, prompt_cache_bytes=0)
    yield gen
    await gen.close()


async def staggered(gen, requests) -> list:
    async def one(i, r):
        await asyncio.sleep(0.004 * i)
        return await run(gen, r)

    return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))


def logprobs_of(result) -> np.ndarray:
    return np.asarray([e.logprob for d in result[1] for e in d.logprobs])


async def test_the_tokens_of_og_generator_whatever_runs_beside(batched, generator):
    # logprobs too: a wrong KV position shifts every later logit a little, rarely enough to change a token
    requests = [request(i, logprobs=1) for i in range(12)]
    alone = [await run(generator, r) for r in requests]
    for _ in range(2):  # the second round starts from kept rows
        together = await staggered(batched, requests)
        assert [ids_of(t[1]) for t in together] == [ids_of(a[1]) for a in alone]
        assert [t[2].completion_tokens for t in together] == [a[2].completion_tokens for a in alone]
        for t, a in zip(together, alone, strict=True):
            assert np.allclose(logprobs_of(t), logprobs_of(a), rtol=0, atol=1e-5)
    assert sum(t[2].cached_tokens for t in together) > 0
    stats = await batched.stats()
    assert stats["rows"] == 4 and stats["rows_active"] == 0 and stats["rows_kept"] > 0


async def test_logprobs_penalties_and_stops_as_on_og_generator(batched, generator):
    variants = [
        {"logprobs": 3},
        {"repetition_penalty": 1.3},
        {"frequency_penalty": 0.8, "presence_penalty": 0.4, "logit_bias": ((5, 3.0), (9, -100.0))},
    ]
    requests = [request(i, **variants[i % 3]) for i in range(6)]
    alone = [await run(generator, r) for r in requests]
    together = await staggered(batched, requests)
    for a, t in zip(alone, together, strict=True):
        assert ids_of(t[1]) == ids_of(a[1])
        ours = [(e.token_id, [x.token_id for x in e.top]) for d in t[1] for e in d.logprobs]
        theirs = [(e.token_id, [x.token_id for x in e.top]) for d in a[1] for e in d.logprobs]
        assert ours == theirs
        values = np.asarray([e.logprob for d in t[1] for e in d.logprobs] or [0.0])
        expected = np.asarray([e.logprob for d in a[1] for e in d.logprobs] or [0.0])
        assert np.allclose(values, expected, atol=1e-4)
    # a stop string ends the request where og ends it
    text = "".join(d.text for d in alone[0][1])
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if stop.strip():
        stopped = GenerationRequest(
            "s", Prompt(text=prompt(0)), SamplingParams(temperature=0, max_tokens=40, stop=(stop,))
        )
        ours, theirs = await asyncio.gather(run(batched, stopped), run(generator, stopped))
        assert "".join(d.text for d in ours[1]) == "".join(d.text for d in theirs[1])
        assert ours[2].finish_reason == theirs[2].finish_reason == "stop"


async def test_a_seed_repeats_beside_other_requests(batched):
    seeded = request(3, temperature=0.9, seed=11)
    alone = await run(batched, seeded)
    crowd = await staggered(batched, [request(1), seeded, request(2, temperature=1.0), request(5)])
    assert ids_of(crowd[1][1]) == ids_of(alone[1])


class InProcess:
    """A BatchedScheduler's loop on a thread, fed and read through pipes as the server does."""

    def __init__(self, loaded, options):
        self.ends, runner = Pipe()
        self.events, events_out = Pipe()
        self.scheduler = batched_scheduler.BatchedScheduler(loaded, options, runner, events_out)
        self.thread = threading.Thread(target=self.scheduler.serve, daemon=True)
        self.thread.start()
        self.tokens: dict[int, list[int]] = {}
        self.finished: set[int] = set()

    def send(self, *message) -> None:
        self.ends.send(message)

    def read(self, until) -> None:
        """Read events (failures fail the test) until `until()` holds; `until` is asked after each message."""
        while not until():
            assert self.events.poll(60), "the runner stopped answering"
            for rid, event in self.events.recv()[1]:
                assert not isinstance(event, ipc.Failure), event
                if isinstance(event, TextDelta):
                    self.tokens.setdefault(rid, []).extend(event.token_ids)
                elif isinstance(event, Finished):
                    self.finished.add(rid)

    def close(self) -> None:
        self.send(ipc.SHUTDOWN)
        self.thread.join(10)


def options(**changes) -> ipc.RunnerOptions:
    base = {"num_ctx": 1024, "device": "cpu", "threads": 1, "parallel": 4, "prefill_chunk": 64}
    return ipc.RunnerOptions(**{**base, **changes})


def test_requests_dropped_while_waiting_or_generating_free_their_rows(chat_store):
    loaded, _ = batched_scheduler.load(chat_store.get("tiny-llama").folder, options(parallel=2))
    runner = InProcess(loaded, options(parallel=2))
    try:
        for rid in range(5):
            runner.send(ipc.GENERATE, rid, request(rid, max_tokens=300, min_tokens=300))
        runner.read(lambda: len(runner.tokens.get(0, [])) > 3)
        runner.send(ipc.CANCEL, 0)  # generating
        runner.send(ipc.CANCEL, 4)  # still waiting for a row
        runner.read(lambda: {1, 2, 3} <= runner.finished)
        assert 0 not in runner.finished and 4 not in runner.finished
        assert all(len(runner.tokens[rid]) == 300 for rid in (1, 2, 3))
        assert not runner.scheduler.active and not runner.scheduler.waiting and not runner.scheduler.rows.active
    finally:
        runner.close()


def test_rows_give_way_to_a_long_request_within_the_kv_budget(chat_store):
    """A KV budget of one row of the whole context leaves the long request alone in the buffers while it is
    long; short ones wait for a row, and all finish."""
    folder = chat_store.get("tiny-llama").folder
    loaded, _ = batched_scheduler.load(folder, options())
    per_token = loaded[1].row_bytes_per_token
    # half of the memory ceiling is the KV budget: one row of the served context (1,024 tokens), or four of 256
    runner = InProcess(loaded, options(memory_limit=2 * per_token * 1024))
    long = GenerationRequest(
        "long", Prompt(text=prompt(2)), SamplingParams(temperature=0, max_tokens=700, min_tokens=700)
    )
    fewest_rows = [runner.scheduler.decoder.rows]

    def all_done() -> bool:
        fewest_rows.append(runner.scheduler.decoder.rows)
        return len(runner.finished) == 4

    try:
        for rid, r in enumerate([long, *(request(i) for i in range(3))]):
            runner.send(ipc.GENERATE, rid, r)
        runner.read(all_done)
    finally:
        runner.close()
    assert min(fewest_rows) < 4 and runner.scheduler.decoder.capacity >= 700
    assert len(runner.tokens[0]) == 700 and all(len(runner.tokens[i + 1]) == 5 + 9 * i for i in range(3))


def test_the_og_model_waits_for_a_request_that_needs_og_generator(chat_store):
    """The batched path holds one copy of the weights until a request runs on og.Generator (here a grammar),
    which then runs beside batched ones."""
    loaded, info = batched_scheduler.load(chat_store.get("tiny-llama").folder, options())
    model = loaded[0]
    assert model.og_model is None and info.guidance_error is None
    assert loaded[1].last_position_only  # the LM head reads the last position of a prefill chunk only
    runner = InProcess(loaded, options())
    try:
        runner.send(ipc.GENERATE, 0, request(0))
        runner.read(lambda: 0 in runner.finished)
        assert model.og_model is None
        grammar = Guidance(kind="regex", data="[a-c]{6}", param="response_format")
        constrained = GenerationRequest("g", Prompt(text=prompt(1)), SamplingParams(temperature=0, guidance=grammar))
        runner.send(ipc.GENERATE, 1, constrained)
        runner.send(ipc.GENERATE, 2, request(2))
        runner.read(lambda: {1, 2} <= runner.finished)
    finally:
        runner.close()
    assert model.og_model is not None and model.guidance_error is None
    text = model.tokenizer.decode(runner.tokens[1])
    assert len(text) == 6 and set(text) <= set("abc"), text
