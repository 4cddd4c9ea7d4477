"""The prompt cache's choice of a kept generator (pure: the generators are stand-in objects here; the runner's
reuse of real og.Generators is tested in tests/integration/test_prompt_cache_engine.py)."""

from __future__ import annotations

import numpy as np

from ortserve.server.engine.prompt_cache import CachedPrompt, Outgrown, PromptCache, common_prefix, options_key

GREEDY = {"max_length": 4096, "do_sample": False, "repetition_penalty": 1.0}


def ids(*runs: range | list[int]) -> np.ndarray:
    return np.asarray([t for run in runs for t in run], dtype=np.int32)


def kept(name: str, tokens: np.ndarray, options=GREEDY, nbytes: int = 100) -> CachedPrompt:
    return CachedPrompt(name, tokens, options_key(options), int(options["max_length"]), nbytes)


def test_common_prefix():
    assert common_prefix(ids(range(10)), ids(range(10))) == 10
    assert common_prefix(ids(range(10)), ids(range(5), [99])) == 5
    assert common_prefix(ids(range(3)), ids(range(8))) == 3
    assert common_prefix(ids([]), ids(range(8))) == 0


def test_takes_the_longest_prefix_and_never_the_whole_prompt():
    cache = PromptCache(10_000, min_prefix=32)
    cache.keep(kept("system prompt only", ids(range(40))))
    cache.keep(kept("previous turn", ids(range(100), [7, 7, 7])))  # its reply was re-tokenized differently
    hit = cache.take(ids(range(120)), GREEDY)
    assert hit is not None and (hit.generator, hit.prefix, hit.max_length) == ("previous turn", 100, 4096)
    assert len(cache) == 1 and cache.nbytes == 100  # taken out: one request at a time owns a generator
    # the same prompt again: all but its last token (whose logits start the reply)
    cache.keep(kept("again", ids(range(120))))
    assert cache.take(ids(range(120)), GREEDY).prefix == 119


def test_a_short_match_is_a_miss():
    cache = PromptCache(10_000, min_prefix=32)
    cache.keep(kept("a", ids(range(100))))
    assert cache.take(ids(range(31), [500] * 50), GREEDY) is None
    assert cache.take(ids(range(31)), GREEDY) is None  # 30 reusable tokens (the last one is always read)
    assert cache.stats() == {"kept": 1, "bytes": 100, "hits": 0, "misses": 2, "reused_tokens": 0}


def test_only_generators_with_the_same_search_options_and_room_are_reused():
    cache = PromptCache(10_000, min_prefix=4)
    cache.keep(kept("greedy", ids(range(50))))
    sampled = {**GREEDY, "do_sample": True, "temperature": 0.7, "top_p": 1.0, "top_k": 0, "random_seed": -1}
    assert cache.take(ids(range(60)), sampled) is None
    assert cache.take(ids(range(60)), {**GREEDY, "max_length": 100}).generator == "greedy"  # less room is fine
    # no room for prompt + budget: the chat outgrew it; dropped, and the request told so
    cache.keep(kept("greedy", ids(range(50))))
    assert cache.take(ids(range(60)), {**GREEDY, "max_length": 5000}) == Outgrown(50)
    assert len(cache) == 0 and cache.nbytes == 0


def test_least_recently_kept_goes_first_past_the_byte_budget():
    cache = PromptCache(250, min_prefix=4)
    for name, start in (("a", 0), ("b", 1000), ("c", 2000)):
        cache.keep(kept(name, ids(range(start, start + 50))))
    assert len(cache) == 2 and cache.nbytes == 200
    assert cache.take(ids(range(0, 60)), GREEDY) is None  # "a" went
    assert cache.take(ids(range(1000, 1060)), GREEDY).generator == "b"
    cache.keep(kept("too big", ids(range(50)), nbytes=251))
    assert len(cache) == 1  # never kept: larger than the whole budget


def test_a_zero_budget_keeps_nothing():
    cache = PromptCache(0)
    assert not cache.enabled
    cache.keep(kept("a", ids(range(100))))
    assert len(cache) == 0
