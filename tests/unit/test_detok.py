"""The incremental detokenizer joins to exactly what `decode(all ids)` gives."""

from __future__ import annotations

import random

import pytest

from ortserve.conversion.demo import train_tokenizer
from ortserve.server.engine.detok import IncrementalDecoder


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def stream(tokenizer, ids):
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.feed(i) for i in ids]
    return pieces, decoder.flush()


@pytest.mark.parametrize(
    "text", ["Hello world", "Grüße aus München 🙂 こんにちは世界", "a\n\n  b", "<tool_call>{}</tool_call>"]
)
def test_text_round_trips_piece_by_piece(tokenizer, text):
    ids = tokenizer.encode(text).ids
    pieces, tail = stream(tokenizer, ids)
    assert "".join(pieces) + tail == text == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # multi-byte characters are never split


def test_random_ids_match_a_whole_decode_with_replacement_characters(tokenizer):
    rng = random.Random(0)
    vocab = tokenizer.get_vocab_size()
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        pieces, tail = stream(tokenizer, ids)
        assert "".join(pieces) + tail == tokenizer.decode(ids, skip_special_tokens=True)


def test_incomplete_character_is_held_until_complete(tokenizer):
    ids = tokenizer.encode("🙂").ids
    assert len(ids) > 1  # a byte-level tokenizer splits the emoji's 4 bytes
    pieces, tail = stream(tokenizer, ids)
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🙂" and tail == ""


def test_special_tokens_asked_for_stay_visible(tokenizer):
    end = tokenizer.token_to_id("<|im_end|>")  # special: decoding skips it
    ids = tokenizer.encode("Hello").ids + [end] + tokenizer.encode(" world").ids
    assert "".join(stream(tokenizer, ids)[0]) == "Hello world"
    decoder = IncrementalDecoder(tokenizer, {end: "<|im_end|>"})
    assert "".join(decoder.feed(i) for i in ids) + decoder.flush() == "Hello<|im_end|> world"
    call = tokenizer.token_to_id("<tool_call>")  # not special: decoded as usual, never twice
    decoder = IncrementalDecoder(tokenizer, {call: "<tool_call>"})
    assert "".join(decoder.feed(i) for i in [call, *ids]) + decoder.flush() == "<tool_call>Hello world"
