"""The stop-string matcher alone: what is emitted, what is held back, where it stops."""

from __future__ import annotations

import random

import pytest

from ortserve.server.engine.stops import StopMatcher


def run(stops, pieces):
    """Feed pieces; return (emitted pieces, stopped, text flushed at the end)."""
    matcher = StopMatcher(stops)
    emitted = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        emitted.append(text)
        if stopped:
            return emitted, True, ""
    return emitted, False, matcher.flush()


def test_no_stops_passes_everything_through():
    assert run([], ["a", "b\n", ""]) == (["a", "b\n", ""], False, "")


def test_stop_inside_one_piece_cuts_before_it():
    assert run(["END"], ["abc", "xyENDzz"]) == (["abc", "xy"], True, "")


def test_stop_split_across_pieces_is_never_emitted():
    emitted, stopped, _ = run(["\n\n"], ["Hello", "\n", "\nWorld"])
    assert emitted == ["Hello", "", ""]
    assert stopped


def test_held_prefix_is_released_when_it_cannot_become_a_stop():
    emitted, stopped, flushed = run(["abc"], ["x", "ab", "d", "e"])
    assert emitted == ["x", "", "abd", "e"]
    assert not stopped and flushed == ""


def test_tail_that_might_start_a_stop_is_flushed_at_the_end():
    emitted, stopped, flushed = run(["STOP"], ["one ", "ST"])
    assert emitted == ["one ", ""]
    assert not stopped and flushed == "ST"


def test_the_first_stop_to_complete_ends_generation():
    # "cd" completes with the second piece; "bcde" would need a third that is never generated
    emitted, stopped, _ = run(["bcde", "cd"], ["ab", "cd", "e"])
    assert "".join(emitted) == "ab" and stopped


def test_stops_completing_in_the_same_piece_cut_at_the_earliest_start():
    emitted, stopped, _ = run(["bcde", "cd"], ["a", "bcde"])
    assert "".join(emitted) == "a" and stopped


def test_stop_spanning_many_pieces():
    emitted, stopped, _ = run(["<|end|>"], ["hi <", "|", "en", "d", "|", ">", "more"])
    assert "".join(emitted) == "hi " and stopped


def test_overlapping_self_prefix():
    # "aab": after "aa" + "a" the longest useful tail is "aa", not "aaa"
    emitted, stopped, _ = run(["aab"], ["a", "a", "a", "b"])
    assert "".join(emitted) == "a" and stopped


def test_empty_and_duplicate_stop_strings_are_ignored():
    matcher = StopMatcher(["", "x", "x"])
    assert matcher.stops == ("x",)
    assert matcher.feed("abc") == ("abc", False)


def test_nothing_after_a_stop():
    matcher = StopMatcher(["."])
    assert matcher.feed("a.b") == ("a", True)
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_multibyte_stop_strings():
    emitted, stopped, _ = run(["こんにちは"], ["Hi こん", "にち", "は world"])
    assert "".join(emitted) == "Hi " and stopped


@pytest.mark.parametrize("seed", range(4))
def test_random_splits_agree_with_a_search_after_each_piece(seed):
    rng = random.Random(seed)
    for _ in range(100):
        _check_random_case(rng)


def _check_random_case(rng: random.Random) -> None:
    alphabet = "ab\n."
    text = "".join(rng.choice(alphabet) for _ in range(60))
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4))]
    cuts = sorted(rng.sample(range(1, len(text)), 15))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    emitted, stopped, flushed = run(stops, pieces)
    # reference: the first piece after which the text so far holds a stop; cut at that stop's earliest start
    for end in [*cuts, len(text)]:
        hits = [i for i in (text[:end].find(s) for s in stops) if i >= 0]
        if hits:
            assert stopped and "".join(emitted) == text[: min(hits)]
            return
    assert not stopped and "".join(emitted) + flushed == text
