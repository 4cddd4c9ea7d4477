"""Prompt reuse across turns on both CPU paths (tiny random Llama, fp32, in its runner process): the batched
decoder's kept rows and the og.Generator path's kept generators.

A request served from the prompt cache must give exactly the tokens of the same request on a runner that
keeps nothing (greedy, fp32); `cached_tokens` says how many prompt tokens it did not prefill.
"""

from __future__ import annotations

import asyncio

import pytest

from ortserve.server.engine import load_generator
from ortserve.server.engine.generation import GenerationRequest, Prompt, PromptLogprobs, SamplingParams
from tests.integration.generation import ids_of, run

pytestmark = pytest.mark.slow

# long enough that three short turns fit in the room a kept generator gets (twice its first request's need)
SYSTEM = {"role": "system", "content": "You are a careful assistant. Answer briefly, in plain words. " * 4}
TURNS = ["What is the weather in Paris today?", "And tomorrow, will it rain?", "Thank you, what about Lyon then?"]


@pytest.fixture(scope="module", params=["batched", "generator"])
def batched(request) -> bool:
    return request.param == "batched"


@pytest.fixture(scope="module")
async def cached(chat_store, batched):
    gen = await load_generator(chat_store.get("tiny-llama"), prefill_chunk=16, batched=batched)
    yield gen
    await gen.close()


@pytest.fixture(scope="module")
async def cold(chat_store, batched):
    gen = await load_generator(chat_store.get("tiny-llama"), prefill_chunk=16, prompt_cache_bytes=0, batched=batched)
    yield gen
    await gen.close()


def chat(messages, **params) -> GenerationRequest:
    return GenerationRequest("req", Prompt(messages=messages), SamplingParams(**{"temperature": 0, **params}))


def text(prompt: str, **params) -> GenerationRequest:
    return GenerationRequest("req", Prompt(text=prompt), SamplingParams(**{"temperature": 0, **params}))


async def converse(gen, **params) -> list[tuple[list[int], int, int]]:
    """A growing chat: each turn sends the history (with the model's replies) and one more question.
    Returns each turn's (tokens, prompt tokens, cached tokens)."""
    messages: list[dict] = [SYSTEM]
    turns = []
    for question in TURNS:
        messages.append({"role": "user", "content": question})
        started, deltas, finished = await run(gen, chat(messages, max_tokens=12, **params))
        messages.append({"role": "assistant", "content": "".join(d.text for d in deltas)})
        turns.append((ids_of(deltas), started.prompt_tokens, finished.cached_tokens))
    return turns


async def test_later_turns_start_from_the_cache_and_equal_a_cold_run(cached, cold):
    reused, fresh = await converse(cached), await converse(cold)
    assert [t[0] for t in reused] == [t[0] for t in fresh]  # the same tokens, turn by turn
    assert [t[1] for t in reused] == [t[1] for t in fresh]
    assert all(t[2] == 0 for t in fresh)  # a runner that keeps nothing reuses nothing
    assert reused[0][2] == 0
    for (_, previous_prompt, _), (_, prompt, hit) in zip(reused, reused[1:], strict=False):
        # at least the previous prompt (the reply may re-tokenize differently), never the whole prompt
        assert previous_prompt <= hit < prompt
    # the same prompt again: everything but its last token, and the same answer
    again = await converse(cached)
    assert [t[0] for t in again] == [t[0] for t in fresh]
    assert again[0][2] == again[0][1] - 1


async def test_logits_processing_and_penalties_on_a_reused_generator(cached, cold):
    # og's repetition penalty reads the generator's sequence; ours reads the request's tokens
    for params in ({"repetition_penalty": 1.5}, {"frequency_penalty": 1.0, "presence_penalty": 0.5}):
        reused, fresh = await converse(cached, **params), await converse(cold, **params)
        assert [t[0] for t in reused] == [t[0] for t in fresh]
        assert reused[-1][2] > 0


@pytest.mark.parametrize("batched", ["generator"], indirect=True)  # the og.Generator path's rules
async def test_what_skips_the_cache(cached, cold):
    long = "The quick brown fox jumps over the lazy dog. " * 8
    first = await run(cached, text(long, max_tokens=4))
    again = await run(cached, text(long, max_tokens=4))
    assert again[2].cached_tokens == again[0].prompt_tokens - 1 and ids_of(again[1]) == ids_of(first[1])
    # other search options live in the generator: not reused (and a seed must start its own random stream)
    assert (await run(cached, text(long, max_tokens=4, temperature=0.7)))[2].cached_tokens == 0
    seeded = [await run(cached, text(long, max_tokens=8, temperature=0.7, seed=3)) for _ in range(2)]
    assert [s[2].cached_tokens for s in seeded] == [0, 0] and ids_of(seeded[0][1]) == ids_of(seeded[1][1])
    # prompt logprobs need every prompt position's logits: read in full, then kept
    echoed = [e async for e in cached.generate(text(long, max_tokens=2, prompt_logprobs=1))]
    assert isinstance(echoed[1], PromptLogprobs) and echoed[-1].cached_tokens == 0
    # a short prompt is not worth it
    await run(cached, text("Hello there", max_tokens=2))
    assert (await run(cached, text("Hello there", max_tokens=2)))[2].cached_tokens == 0
    # a budget beyond the kept generator's room: a fresh generator, the same tokens
    bigger = await run(cached, text(long, max_tokens=400))
    fresh = await run(cold, text(long, max_tokens=400))
    assert bigger[2].cached_tokens == 0 and ids_of(bigger[1]) == ids_of(fresh[1])
    stats = (await cached.stats())["prompt_cache"]
    assert stats["hits"] >= 1 and stats["kept"] >= 1 and stats["bytes"] > 0


async def test_concurrent_requests_share_a_system_prompt(cached, cold):
    shared = [[SYSTEM, {"role": "user", "content": q}] for q in TURNS]
    await run(cached, chat(shared[0], max_tokens=4))  # leaves the system prompt in the cache
    together = await asyncio.gather(*(run(cached, chat(m, max_tokens=8)) for m in shared))
    solo = [await run(cold, chat(m, max_tokens=8)) for m in shared]
    assert [ids_of(r[1]) for r in together] == [ids_of(r[1]) for r in solo]
    assert sum(r[2].cached_tokens > 0 for r in together) >= 1  # one generator, taken by one request at a time


@pytest.mark.parametrize("batched", ["batched"], indirect=True)  # the batched path's rules
async def test_what_the_batched_path_reuses(cached, cold):
    long = "The quick brown fox jumps over the lazy dog. " * 8
    first = await run(cached, text(long, max_tokens=4))
    again = await run(cached, text(long, max_tokens=4))
    assert again[2].cached_tokens == again[0].prompt_tokens - 1 and ids_of(again[1]) == ids_of(first[1])
    # sampling lives in the request, not in the KV: sampled and seeded requests reuse it too, and a seed repeats
    assert (await run(cached, text(long, max_tokens=4, temperature=0.7)))[2].cached_tokens > 0
    seeded = [await run(cached, text(long, max_tokens=8, temperature=0.7, seed=3)) for _ in range(2)]
    assert all(s[2].cached_tokens > 0 for s in seeded) and ids_of(seeded[0][1]) == ids_of(seeded[1][1])
    # prompt logprobs run on an og.Generator (every prompt position's logits): no kept row serves them
    echoed = [e async for e in cached.generate(text(long, max_tokens=2, prompt_logprobs=1))]
    assert isinstance(echoed[1], PromptLogprobs) and echoed[-1].cached_tokens == 0
    # a budget larger than the first request's: the row grows, the tokens are those of a cold run
    bigger = await run(cached, text(long, max_tokens=400))
    fresh = await run(cold, text(long, max_tokens=400))
    assert bigger[2].cached_tokens > 0 and ids_of(bigger[1]) == ids_of(fresh[1])
    stats = await cached.stats()
    assert stats["rows_kept"] >= 1 and stats["kv_capacity"] >= bigger[0].prompt_tokens + 399
