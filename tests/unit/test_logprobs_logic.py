"""Logits processing, token spelling and the logprobs response shapes, without a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ortserve.server.engine.detok import TokenSpeller
from ortserve.server.engine.generation import SamplingParams, TokenLogprob
from ortserve.server.engine.logits import BANNED, FLOOR, LogitsProcessor, LogprobsTrail, entry, log_softmax, top_ids
from ortserve.server.protocol.logprobs import ChoiceLogprobs, CompletionLogprobs, TextOffsets

VOCAB = 8


def processor(prompt=(1, 2), budget=10, **params) -> LogitsProcessor:
    return LogitsProcessor(SamplingParams(**params), VOCAB, frozenset({7}), np.asarray(prompt), budget)


def test_processing_follows_openai_then_genai_order():
    """presence/frequency, then logit_bias, then the min_tokens ban, then the repetition penalty."""
    p = processor(
        presence_penalty=0.5,
        frequency_penalty=0.25,
        logit_bias=((3, -2.0), (4, 1.5)),
        repetition_penalty=2.0,
        min_tokens=2,
        temperature=0.5,
    )
    for token in (3, 3, 5):
        p.observe(token)
    logits = np.asarray([[[1.0, -1.0, 2.0, 0.5, 0.0, 1.0, 3.0, 4.0]]], dtype=np.float32)
    out = p.process(logits)
    assert out.shape == logits.shape and logits[0, 0, 3] == 0.5  # the input is not modified
    expected = np.asarray([1.0, -1.0, 2.0, 0.5 - 2 * 0.25 - 0.5 - 2.0, 1.5, 1.0 - 0.25 - 0.5, 3.0, 4.0])
    seen = [1, 2, 3, 5]  # prompt and generated tokens
    expected[seen] = np.where(expected[seen] < 0, expected[seen] * 2, expected[seen] / 2)
    assert out.reshape(-1) == pytest.approx(expected)  # min_tokens met after 3 tokens: 7 stays
    assert p.logprobs(out) == pytest.approx(log_softmax(expected.astype(np.float32) / 0.5), abs=1e-6)


def test_min_tokens_bans_the_end_until_met():
    p = processor(min_tokens=2)
    logits = np.zeros(VOCAB, dtype=np.float32)
    assert p.changes_logits and p.process(logits)[7] == BANNED
    p.observe(0)
    p.observe(0)
    assert not p.changes_logits and p.process(logits)[7] == 0
    assert p.logprobs(processor(min_tokens=1).process(logits))[7] < -1e30  # reported as FLOOR by `entry`


def test_logprobs_only_leaves_logits_alone_and_greedy_is_plain_log_softmax():
    p = processor(logprobs=2, temperature=0)
    logits = np.arange(VOCAB, dtype=np.float32)
    assert not p.changes_logits
    assert p.logprobs(p.process(logits)) == pytest.approx(log_softmax(logits))
    assert np.exp(log_softmax(logits)).sum() == pytest.approx(1)


def test_top_ids_sorted_and_keep_the_chosen_token_on_a_tie():
    lp = np.asarray([-3.0, -1.0, -2.0, -1.0, -5.0, -2.0])
    assert list(top_ids(lp, 3)) == [1, 3, 2]  # ties: lower id first
    assert list(top_ids(lp, 3, chosen=5)) == [1, 3, 5]  # 5 ties with 2 at the cut and was sampled
    assert list(top_ids(lp, 3, chosen=4)) == [1, 3, 2]  # 4 does not rank
    assert list(top_ids(lp, 0)) == [] and len(top_ids(lp, 20)) == 6


def test_entry_spells_tokens_and_floors_impossible_ones():
    lp = np.asarray([np.float32(BANNED), -0.5, -1.0])
    item = entry(lp, 1, 3, lambda t: (f"t{t}", bytes([65 + t])))
    assert (item.token_id, item.token, item.bytes, item.logprob) == (1, "t1", b"B", -0.5)
    assert [(t.token_id, t.logprob) for t in item.top] == [(1, -0.5), (2, -1.0), (0, FLOOR)]
    json.dumps(ChoiceLogprobs.of([item]).model_dump())  # valid JSON: no -inf


def test_trail_releases_entries_with_their_text_and_drops_a_stop_strings():
    def item(i):
        return TokenLogprob(i, f"t{i}", b"", -1.0)

    trail = LogprobsTrail()
    trail.add(item(0), 2)  # "ab": sent at once
    assert [e.token_id for e in trail.release(2)] == [0]
    trail.add(item(1), 0)  # the first bytes of a character: no text yet
    trail.add(item(2), 1)  # completes it
    trail.add(item(3), 1)  # "x", held back (it may start a stop string)
    assert [e.token_id for e in trail.release(1)] == [1, 2]
    trail.add(item(4), 1)  # "y": "xy" was the stop string, cut
    assert [e.token_id for e in trail.release(0, final=False)] == []
    end = LogprobsTrail()
    end.add(item(5), 0)
    assert [e.token_id for e in end.release(0, final=True)] == [5]  # at the end (no stop) all are reported


def test_byte_level_spelling():
    from ortserve.conversion.demo import train_tokenizer

    tok = train_tokenizer()
    speller = TokenSpeller(tok, decode=None)
    ids = tok.encode("こんにちは 🙂 Grüße").ids
    spelled = [speller(i) for i in ids]
    assert b"".join(raw for _, raw in spelled).decode() == "こんにちは 🙂 Grüße"
    assert any("\\x" in text for text, _ in spelled)  # split characters are escaped, not U+FFFD
    assert all(text == raw.decode("utf-8", errors="backslashreplace") for text, raw in spelled)
    assert speller(tok.token_to_id("<|im_end|>")) == ("<|im_end|>", b"<|im_end|>")


def test_sentencepiece_spelling_with_byte_fallback():
    from tokenizers import Tokenizer, decoders, models

    vocab = {"<unk>": 0, "▁Hello": 1, "<0xE3>": 2, "<0x81>": 3, "<0x93>": 4, "world": 5}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    speller = TokenSpeller(tok, decode=None)
    assert speller(1) == (" Hello", b" Hello")  # the leading space stays: it is the token's
    assert speller(2) == ("\\xe3", b"\xe3")
    assert speller(5) == ("world", b"world")


def test_spelling_without_a_tokenizer_json_uses_genai_decode():
    speller = TokenSpeller(None, decode=lambda ids: {3: "é"}[ids[0]])
    assert speller(3) == ("é", "é".encode())


def test_completion_shape_text_offsets_and_top_dicts():
    def item(token, raw, logprob, top=()):
        return TokenLogprob(0, token, raw, logprob, top)

    prompt = [
        item("A", b"A", None),
        item("\\xc3", b"\xc3", -1.0, (item("x", b"x", -0.5),)),
        item("\\xa9", b"\xa9", -2.0),
    ]
    offsets = TextOffsets()
    out = CompletionLogprobs.of(prompt, offsets)
    assert out.tokens == ["A", "\\xc3", "\\xa9"] and out.token_logprobs == [None, -1.0, -2.0]
    assert out.top_logprobs == [None, {"x": -0.5, "\\xc3": -1.0}, {"\\xa9": -2.0}]  # the token itself is added
    assert out.text_offset == [0, 1, 1]  # both halves of "é" point at it
    more = CompletionLogprobs.of([item("b", b"b", -0.1)], offsets)  # a stream's next chunk
    assert more.text_offset == [2]
    assert CompletionLogprobs.of([item("c", b"c", -0.1)], TextOffsets(10)).text_offset == [10]


def test_chat_shape():
    item = TokenLogprob(5, "hi", b"hi", -0.25, (TokenLogprob(5, "hi", b"hi", -0.25), TokenLogprob(6, "yo", b"yo", -2)))
    assert ChoiceLogprobs.of([item]).model_dump() == {
        "content": [
            {
                "token": "hi",
                "logprob": -0.25,
                "bytes": [104, 105],
                "top_logprobs": [
                    {"token": "hi", "logprob": -0.25, "bytes": [104, 105]},
                    {"token": "yo", "logprob": -2, "bytes": [121, 111]},
                ],
            }
        ],
        "refusal": None,
    }
