"""/v1/chat/completions on a real server, through the official openai client.

The tiny fixture models have random weights: their text is gibberish, so these
tests compare the server with itself (greedy is deterministic, streaming equals
non-streaming, an alias equals its name) rather than with expected words.
"""

from __future__ import annotations

import asyncio

import openai

from tests.e2e.conftest import ALIASES, CHAT_MODEL, SYSTEM_PROMPT, TERSE

HELLO = [{"role": "user", "content": "Say hello to the tests."}]


def greedy(client: openai.OpenAI, model: str = CHAT_MODEL, messages=HELLO, **fields):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **fields)


def test_response_shape(client):
    response = greedy(client, max_tokens=8)
    assert response.id.startswith("chatcmpl-") and response.object == "chat.completion"
    assert response.model == CHAT_MODEL and response.system_fingerprint.startswith("fp_ortserve_")
    assert isinstance(response.created, int)
    [choice] = response.choices
    assert choice.index == 0 and choice.message.role == "assistant" and isinstance(choice.message.content, str)
    usage = response.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 8
    else:
        assert choice.finish_reason == "stop" and usage.completion_tokens <= 8


def test_greedy_is_deterministic_and_seed_reproduces_sampling(client):
    first, second = (greedy(client, max_tokens=12).choices[0].message.content for _ in range(2))
    assert first == second
    sampled = [
        client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, temperature=1.0, seed=1234, max_tokens=12)
        for _ in range(2)
    ]
    assert sampled[0].choices[0].message.content == sampled[1].choices[0].message.content


def test_stream_equals_non_stream(client):
    whole = greedy(client, max_tokens=12)
    chunks = list(greedy(client, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *content_chunks, usage_chunk = chunks
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == whole.choices[0].message.content
    assert content_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage


def test_stream_without_usage_has_no_usage_chunk(client):
    chunks = list(greedy(client, max_tokens=4, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_max_completion_tokens_wins_over_max_tokens(client):
    both = greedy(client, max_tokens=2, max_completion_tokens=6)
    six = greedy(client, max_tokens=6)
    assert both.choices[0].message.content == six.choices[0].message.content
    assert both.usage == six.usage


def test_stop_sequence_cuts_the_text(client):
    baseline = greedy(client, max_tokens=16).choices[0].message.content
    assert len(baseline) >= 6, baseline
    middle = len(baseline) // 2
    stop = baseline[middle : middle + 2]
    expected = baseline[: baseline.index(stop)]
    for stops in (stop, [stop, "\u2603never\u2603"]):
        response = greedy(client, max_tokens=16, stop=stops)
        assert response.choices[0].message.content == expected
        assert response.choices[0].finish_reason == "stop"


def test_alias_serves_the_same_model(client):
    expected = greedy(client, max_tokens=6)
    for alias in ALIASES:
        response = greedy(client, model=alias, max_tokens=6)
        assert response.model == alias
        assert response.choices[0].message.content == expected.choices[0].message.content


def test_configured_system_prompt_is_used_when_none_is_sent(client):
    plain = greedy(client, max_tokens=1).usage.prompt_tokens
    terse = greedy(client, model=TERSE, max_tokens=1).usage.prompt_tokens
    assert terse > plain
    explicit = [{"role": "system", "content": SYSTEM_PROMPT}, *HELLO]
    assert greedy(client, messages=explicit, max_tokens=1).usage.prompt_tokens == terse
    other = [{"role": "system", "content": "Hi."}, *HELLO]  # a sent system message replaces the configured one
    assert (
        greedy(client, model=TERSE, messages=other, max_tokens=1).usage
        == greedy(client, messages=other, max_tokens=1).usage
    )


def test_text_parts_equal_a_string(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
    joined = [{"role": "user", "content": "one\ntwo"}]
    a, b = greedy(client, messages=parts, max_tokens=6), greedy(client, messages=joined, max_tokens=6)
    assert (a.choices[0].message.content, a.usage) == (b.choices[0].message.content, b.usage)


def test_tools_reach_the_template(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    plain = greedy(client, max_tokens=1).usage.prompt_tokens
    assert greedy(client, max_tokens=1, tools=tools).usage.prompt_tokens > plain
    assert greedy(client, max_tokens=1, tools=tools, tool_choice="none").usage.prompt_tokens == plain
    history = [
        *HELLO,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert greedy(client, messages=history, tools=tools, max_tokens=2).usage.prompt_tokens > plain


def test_accepted_options(client):
    response = greedy(
        client,
        max_tokens=2,
        response_format={"type": "text"},
        n=1,
        user="e2e",
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        messages=[{"role": "developer", "content": "Be brief."}, *HELLO],
    )
    assert response.choices[0].finish_reason in ("stop", "length")


async def test_concurrent_requests_match_sequential(server):
    async with server.async_client(max_retries=0, timeout=120) as client:
        prompts = [[{"role": "user", "content": f"Count to {i}."}] for i in range(4)]

        async def run(messages):
            r = await client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=10)
            return r.choices[0].message.content

        together = await asyncio.gather(*(run(m) for m in prompts))
        alone = [await run(m) for m in prompts]
    assert together == alone


def test_a_client_that_leaves_mid_stream_does_not_hurt_the_server(client):
    stream = greedy(client, max_tokens=1500, stream=True)
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert greedy(client, max_tokens=4).choices[0].finish_reason in ("stop", "length")
