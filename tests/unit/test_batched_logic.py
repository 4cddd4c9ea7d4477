"""The batched path's pure parts: which row a request takes (`KvRows`) and how a token is drawn
(`TokenSampler`). The rows' real KV and the equivalence with og.Generator are tested in
tests/integration/test_batched_engine.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from ortserve.server.engine.generation import SamplingParams
from ortserve.server.engine.kv_rows import KvRows
from ortserve.server.engine.token_sampler import TokenSampler

pytestmark = pytest.mark.unit


@dataclass(eq=False)
class Request:
    name: str
    length: int = 0


def ids(*runs) -> np.ndarray:
    return np.asarray([t for run in runs for t in run], dtype=np.int64)


def test_active_requests_hold_the_first_rows_and_a_release_moves_the_last_one_in():
    rows = KvRows(4)
    a, b, c = Request("a", 10), Request("b", 30), Request("c", 20)
    for r in (a, b, c):
        assert rows.acquire(r, ids(range(50))) == (0, [])  # nothing kept yet: empty rows, in order
    assert rows.active == [a, b, c] and rows.free == 1
    # a leaves row 0: c (the last) takes it, carrying the longer of the two rows' KV; a's KV is kept in row 2
    assert rows.release(a, ids(range(10))) == [(0, 2, 20)]
    assert rows.active == [c, b] and list(rows.kept) == [2]
    # the last active row leaves: no move
    assert rows.release(b, ids(range(30))) == []
    assert rows.active == [c] and sorted(rows.kept) == [1, 2]


def test_a_new_request_takes_the_kept_row_with_the_longest_prefix():
    rows = KvRows(3)
    first, second = Request("turn 1", 40), Request("other", 25)
    rows.acquire(first, ids(range(30)))
    rows.acquire(second, ids(range(100, 120)))
    rows.release(first, ids(range(40)))  # the chat's first turn, with its reply: moved to row 1
    rows.release(second, ids(range(100, 125)))  # stays in row 0
    assert {r: len(k.tokens) for r, k in rows.kept.items()} == {0: 25, 1: 40}
    turn2 = Request("turn 2")
    prefix, swaps = rows.acquire(turn2, ids(range(40), [7, 7]))
    # row 1 comes to row 0 (the first non-active row); what row 0 kept goes to row 1, both intact
    assert prefix == 40 and swaps == [(1, 0, 40)] and rows.active == [turn2]
    assert len(rows.kept[1].tokens) == 25
    # the same prompt as a kept row: all but its last token (whose logits start the reply)
    rows.release(turn2, ids(range(40), [7, 7]))
    again = Request("again")
    assert rows.acquire(again, ids(range(40), [7, 7]))[0] == 41


def test_without_a_match_an_empty_row_then_the_least_recently_used_gives_way():
    rows = KvRows(2)
    old, new = Request("old", 5), Request("new", 5)
    rows.acquire(old, ids(range(5)))
    rows.acquire(new, ids(range(10, 15)))
    rows.release(old, ids(range(5)))
    rows.release(new, ids(range(10, 15)))
    unrelated = Request("unrelated")
    prefix, _ = rows.acquire(unrelated, ids(range(50, 60)))
    assert prefix == 0 and [len(k.tokens) for k in rows.kept.values()] == [5]
    assert next(iter(rows.kept.values())).tokens[0] == 10  # the older row was given up


def test_resizing_forgets_kept_rows_that_no_longer_fit():
    rows = KvRows(4)
    reqs = [Request(str(i), 10 * (i + 1)) for i in range(3)]
    for r in reqs:
        rows.acquire(r, ids(range(100 * reqs.index(r), 100 * reqs.index(r) + 10)))
    rows.release(reqs[2], ids(range(30)))  # kept in row 2
    rows.release(reqs[1], ids(range(20)))  # kept in row 1
    rows.resize(2, capacity=256)
    assert list(rows.kept) == [1] and rows.rows == 2
    rows.resize(2, capacity=10)
    assert rows.kept == {}
    with pytest.raises(AssertionError):
        rows.resize(0, capacity=256)  # an active row cannot be dropped


def logits_of(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def test_greedy_is_the_first_highest_logit():
    sampler = TokenSampler(SamplingParams(temperature=0))
    assert sampler.pick(np.asarray([0.1, 3.0, 3.0, -1.0], dtype=np.float32)) == 1


def test_a_seed_repeats_and_different_seeds_differ():
    logits = logits_of(np.full(1000, 1 / 1000))
    draws = [[TokenSampler(SamplingParams(temperature=1, seed=s)).pick(logits) for _ in range(3)] for s in (7, 7, 8)]
    first = TokenSampler(SamplingParams(temperature=1, seed=7))
    again = TokenSampler(SamplingParams(temperature=1, seed=7))
    seq = [first.pick(logits) for _ in range(20)]
    assert seq == [again.pick(logits) for _ in range(20)] and len(set(seq)) > 5
    assert draws[0] == draws[1]


def test_draws_follow_the_distribution_at_the_temperature():
    probs = np.asarray([0.5, 0.3, 0.15, 0.05])
    counts = np.zeros(4)
    sampler = TokenSampler(SamplingParams(temperature=1, seed=1))
    for _ in range(20_000):
        counts[sampler.pick(logits_of(probs))] += 1
    assert np.allclose(counts / counts.sum(), probs, atol=0.015)
    # temperature 0.5 squares the odds: 0.5^2 : 0.3^2 : ...
    cold = TokenSampler(SamplingParams(temperature=0.5, seed=1))
    counts = np.zeros(4)
    for _ in range(20_000):
        counts[cold.pick(logits_of(probs))] += 1
    expected = probs**2 / (probs**2).sum()
    assert np.allclose(counts / counts.sum(), expected, atol=0.015)


@pytest.mark.parametrize("vocab", [4, 5000])  # below and above the nucleus's first guess of 256 candidates
def test_top_k_and_top_p_cut_the_tail(vocab):
    probs = np.full(vocab, 0.04 / (vocab - 3))
    probs[:3] = [0.6, 0.25, 0.11]
    logits = logits_of(probs / probs.sum())
    top_k = TokenSampler(SamplingParams(temperature=1, top_k=2, seed=3))
    assert {top_k.pick(logits) for _ in range(500)} == {0, 1}
    top_p = TokenSampler(SamplingParams(temperature=1, top_p=0.8, seed=3))  # 0.6 + 0.25 reaches 0.8
    assert {top_p.pick(logits) for _ in range(500)} == {0, 1}
    wide = TokenSampler(SamplingParams(temperature=1, top_p=0.99, seed=3))  # needs the tail: the full sort
    assert len({wide.pick(logits) for _ in range(3000)}) > 3
