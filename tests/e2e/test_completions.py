"""/v1/completions on a real server: prompt forms, echo, streaming, usage, suffix."""

from __future__ import annotations

import openai
import pytest
from tokenizers import Tokenizer

from tests.e2e.conftest import CHAT_MODEL

PROMPT = "Once upon a time"


def greedy(client: openai.OpenAI, prompt=PROMPT, **fields):
    return client.completions.create(model=CHAT_MODEL, prompt=prompt, temperature=0, **fields)


@pytest.fixture(scope="module")
def tokenizer(server) -> Tokenizer:
    return Tokenizer.from_file(str(server.store.get(CHAT_MODEL).folder / "tokenizer.json"))


def test_response_shape_and_default_max_tokens(client):
    response = greedy(client)  # no max_tokens: OpenAI's default for completions is 16
    assert response.id.startswith("cmpl-") and response.object == "text_completion"
    assert response.model == CHAT_MODEL and response.system_fingerprint.startswith("fp_ortserve_")
    [choice] = response.choices
    assert choice.index == 0 and isinstance(choice.text, str) and choice.text
    usage = response.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == 16 if choice.finish_reason == "length" else usage.completion_tokens < 16


def test_token_ids_equal_text(client, tokenizer):
    ids = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    by_text, by_ids = greedy(client, max_tokens=8), greedy(client, prompt=ids, max_tokens=8)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


def test_echo_prepends_the_prompt(client, tokenizer):
    plain = greedy(client, max_tokens=6).choices[0].text
    assert greedy(client, max_tokens=6, echo=True).choices[0].text == PROMPT + plain
    ids = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    assert greedy(client, prompt=ids, max_tokens=6, echo=True).choices[0].text == tokenizer.decode(ids) + plain


def test_many_prompts_one_choice_each_in_order(client, tokenizer):
    prompts = ["The sky is", "One two three", "def main():"]
    singles = [greedy(client, prompt=p, max_tokens=6) for p in prompts]
    batch = greedy(client, prompt=prompts, max_tokens=6)
    assert [c.index for c in batch.choices] == [0, 1, 2]
    assert [c.text for c in batch.choices] == [s.choices[0].text for s in singles]
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert batch.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    id_lists = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    assert [c.text for c in greedy(client, prompt=id_lists, max_tokens=6).choices] == [c.text for c in batch.choices]


def test_stream_equals_non_stream(client):
    prompts = ["The sky is", "One two three"]
    whole = greedy(client, prompt=prompts, max_tokens=8)
    chunks = list(greedy(client, prompt=prompts, max_tokens=8, stream=True, stream_options={"include_usage": True}))
    *text_chunks, usage_chunk = chunks
    assert all(c.object == "text_completion" and len(c.choices) == 1 for c in text_chunks)
    for choice in whole.choices:
        mine = [c.choices[0] for c in text_chunks if c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert mine[-1].finish_reason == choice.finish_reason
        assert all(c.finish_reason is None for c in mine[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage


def test_stream_echo(client):
    chunks = list(greedy(client, max_tokens=4, stream=True, echo=True))
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks) == greedy(client, max_tokens=4, echo=True).choices[0].text


def test_stop_sequence(client):
    baseline = greedy(client, max_tokens=16).choices[0].text
    middle = len(baseline) // 2
    stop = baseline[middle : middle + 2]
    response = greedy(client, max_tokens=16, stop=[stop])
    assert response.choices[0].text == baseline[: baseline.index(stop)]
    assert response.choices[0].finish_reason == "stop"


def test_suffix_needs_fill_in_the_middle_tokens(client):
    with pytest.raises(openai.BadRequestError) as info:
        greedy(client, suffix="\n    return result", max_tokens=4)
    assert info.value.body["param"] == "suffix"
