"""Property-based fuzzing of the three POST routes' bodies (issue #13): whatever JSON arrives, no 5xx, every
4xx in OpenAI's error shape, and the server still answers afterwards.

Bodies are drawn around the real fields (right names with values of any JSON type, and random extra keys),
so most reach deep validation rather than failing on the first key. The engine is the fake of
tests/unit/fake_app.py; a bounded number of examples keeps this well under a minute.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ortserve.core.store import ModelStore
from ortserve.server.app import create_app
from ortserve.server.settings import ServerSettings
from tests.unit.fake_app import CHAT, FakeBackend, add_model, chat_body

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
        "content": st.one_of(st.text(max_size=30), JSON),
    }
)
FIELDS = {
    "/v1/chat/completions": {
        "model": st.sampled_from(["tiny", "nope", ""]),
        "messages": st.lists(MESSAGE, max_size=3),
        "max_tokens": JSON,
        "temperature": JSON,
        "top_p": JSON,
        "n": JSON,
        "stop": JSON,
        "stream": st.booleans(),
        "tools": JSON,
        "tool_choice": JSON,
        "response_format": JSON,
        "logprobs": JSON,
        "top_logprobs": JSON,
        "seed": JSON,
        "logit_bias": JSON,
    },
    "/v1/completions": {
        "model": st.sampled_from(["tiny", "nope"]),
        "prompt": JSON,
        "max_tokens": JSON,
        "echo": JSON,
        "suffix": JSON,
        "best_of": JSON,
        "n": JSON,
        "logprobs": JSON,
    },
    "/v1/embeddings": {
        "model": st.sampled_from(["tiny", "nope"]),
        "input": JSON,
        "encoding_format": JSON,
        "dimensions": JSON,
    },
}


def bodies(path: str):
    fields = FIELDS[path]
    chosen = st.fixed_dictionaries({}, optional=fields)
    return st.tuples(chosen, st.dictionaries(st.text(max_size=6), JSON, max_size=2)).map(lambda t: {**t[1], **t[0]})


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    """One app for every example (a new app per example would dominate the time)."""
    root = tmp_path_factory.mktemp("fuzz")
    settings_ = ServerSettings(models_dir=root / "models", configs_dir=root / "configs", max_request_bytes=65536)
    store = ModelStore(settings_.models_dir)
    add_model(store, "tiny")
    app = create_app(settings_, store, loader=FakeBackend().load)
    loop = asyncio.new_event_loop()
    context = app.test_app()
    test_app = loop.run_until_complete(context.__aenter__())
    yield loop, test_app.test_client()
    loop.run_until_complete(context.__aexit__(None, None, None))
    loop.close()


def check(app_client, path: str, body: dict) -> None:
    loop, client = app_client

    async def run():
        response = await client.post(
            path, data=json.dumps(body, allow_nan=False), headers={"Content-Type": "application/json"}
        )
        status = response.status_code
        text = await response.get_data(as_text=True)
        assert status < 500, (status, text)
        if status >= 400:
            error = json.loads(text)
            assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
            assert error["error"]["message"]
        after = await client.post(CHAT, json=chat_body(model="tiny"))
        assert after.status_code == 200

    loop.run_until_complete(run())


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.mark.parametrize("path", list(FIELDS))
def test_fuzzed_bodies_get_no_5xx_and_an_error_shape(app_client, path):
    @FUZZ
    @given(bodies(path))
    def fuzz(body):
        check(app_client, path, body)

    fuzz()
