"""usage.prompt_tokens_details.cached_tokens on a real server (openai client): 0 for a cold prompt, the reused
prefix for a chat's next turn, in chat and completions, whole and streamed."""

from __future__ import annotations

import uuid

from tests.e2e.conftest import CHAT_MODEL


def system_prompt() -> dict:
    """A system prompt no other test sent (so its first turn is cold), long enough to be worth reusing."""
    return {"role": "system", "content": f"Session {uuid.uuid4().hex}. Answer briefly and plainly. " * 3}


def test_chat_next_turn_reports_cached_tokens(client):
    messages = [system_prompt(), {"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=8)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And tomorrow?"},
    ]
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=messages,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert first.usage.prompt_tokens <= usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    # the same turn again, whole: all but the prompt's last token
    again = client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=8)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert again.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in chunks[:-1])


def test_completions_report_cached_tokens(client, http):
    prompt = f"{uuid.uuid4().hex} Once upon a time, in a small town by the sea, there lived an old sailor. " * 2
    body = {"model": CHAT_MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 4}
    cold = http.post("/v1/completions", json=body).json()
    assert cold["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    warm = client.completions.create(model=CHAT_MODEL, prompt=prompt, temperature=0, max_tokens=4)
    assert warm.usage.prompt_tokens_details.cached_tokens == warm.usage.prompt_tokens - 1
    assert warm.choices[0].text == cold["choices"][0]["text"]
    streamed = list(
        client.completions.create(
            model=CHAT_MODEL,
            prompt=prompt,
            temperature=0,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens == warm.usage.prompt_tokens - 1
