"""The HTTP layer through `app.test_app()`: error JSON, auth, lifecycle, loading, and response shapes.

The engine is the fake `TextGenerator` of tests/unit/fake_app.py (whitespace "tokens", a canned reply): these
tests check what the server does around it, not generation itself (tests/e2e).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from ortserve.core.model_config import ModelConfig, SamplingDefaults
from ortserve.core.store import ModelStore
from ortserve.server.app import create_app
from tests.unit.fake_app import CHAT, USER, add_model, assert_error, chat_body, sse_data


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.models_dir)
    add_model(
        store,
        "tiny",
        aliases=["tiny:latest", "org/tiny"],
        owned_by="me",
        system="Be terse.",
        defaults=SamplingDefaults(temperature=0.3, max_tokens=50),
    )
    add_model(store, "embedder", task="embedding")
    return store


# ---- errors ----------------------------------------------------------------
async def test_unknown_route_and_wrong_method(client):
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert_error(await response.get_json(), type="invalid_request_error", code="not_found")
    response = await client.delete("/v1/chat/completions")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    assert_error(await response.get_json(), type="invalid_request_error", code="method_not_allowed")


async def test_malformed_json_then_the_server_keeps_serving(client):
    broken = b'{"model": "tiny", "messages": ['
    response = await client.post(CHAT, data=broken, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert_error(await response.get_json(), type="invalid_request_error")
    response = await client.post(CHAT, json=chat_body(temperature=9))
    assert response.status_code == 400
    assert_error(await response.get_json(), type="invalid_request_error", param="temperature")
    assert (await client.post(CHAT, json=chat_body())).status_code == 200


async def test_body_too_large(client):
    response = await client.post(CHAT, json=chat_body(messages=[{"role": "user", "content": "x" * 5000}]))
    assert response.status_code == 413
    assert_error(await response.get_json(), type="invalid_request_error", code="payload_too_large")


async def test_unknown_model_and_wrong_task(client):
    response = await client.post(CHAT, json=chat_body(model="nope"))
    assert response.status_code == 404
    assert_error(await response.get_json(), type="invalid_request_error", param="model", code="model_not_found")
    response = await client.post("/v1/completions", json={"model": "embedder", "prompt": "x"})
    assert response.status_code == 400
    assert_error(await response.get_json(), type="invalid_request_error", param="model")


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (CHAT, {"response_format": {"type": "json_object"}}, "response_format"),
        (CHAT, {"tools": [TOOL], "tool_choice": "required"}, "tool_choice"),
        (
            CHAT,
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}, "stream": True},
            "tool_choice",
        ),
        ("/v1/completions", {"prompt": "hi", "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
async def test_output_that_needs_a_grammar_is_501_when_the_engine_cannot_enforce_one(
    client, backend, path, fields, param
):
    backend.options["context_length"] = 500  # room for the tool descriptions
    body = {"model": "tiny", **({"messages": USER} if path == CHAT else {}), **fields}
    response = await client.post(path, json=body)
    assert response.status_code == 501
    body = await response.get_json()
    assert_error(body, type="invalid_request_error", param=param, code="not_supported")
    assert "cannot constrain" in body["error"]["message"]
    assert not backend.generators[0].requests  # refused before generating anything unconstrained
    ok = await client.post(CHAT, json=chat_body(tools=[TOOL]))  # tool_choice auto needs no grammar
    assert ok.status_code == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_context_length_is_a_400_even_when_streaming(client, stream):
    response = await client.post(CHAT, json=chat_body(messages=[{"role": "user", "content": "w " * 40}], stream=stream))
    assert response.status_code == 400
    assert_error(
        await response.get_json(), type="invalid_request_error", param="messages", code="context_length_exceeded"
    )


async def test_engine_crash_is_a_500_and_inside_a_stream_an_error_event(client, backend):
    backend.options = {"fail_at": 1}
    response = await client.post(CHAT, json=chat_body())
    assert response.status_code == 500
    assert_error(await response.get_json(), type="server_error")
    response = await client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    events = sse_data(await response.get_data(as_text=True))
    assert json.loads(events[1])["choices"][0]["delta"] == {"content": "Hel"}
    assert_error(json.loads(events[-2]), type="server_error")
    assert events[-1] == "[DONE]"


async def test_failed_load_is_a_500_and_is_retried(client, backend):
    backend.fail_next_load = True
    response = await client.post(CHAT, json=chat_body())
    assert response.status_code == 500
    assert_error(await response.get_json(), type="server_error", code="backend_error")
    assert (await client.post(CHAT, json=chat_body())).status_code == 200
    assert len(backend.loads) == 2


async def test_api_key(settings, store, backend):
    app = create_app(settings.model_copy(update={"api_key": "sekrit"}), store, loader=backend.load)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/health")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic sekrit"}):
            response = await client.get("/v1/models", headers=headers)
            assert response.status_code == 401
            assert_error(await response.get_json(), type="authentication_error", code="invalid_api_key")
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer sekrit"})).status_code == 200


# ---- lifecycle and loading -----------------------------------------------
async def test_health_says_loading_until_setup_is_done(settings, store, backend):
    release = asyncio.Event()
    app = create_app(settings, store, loader=backend.load, setup=release.wait)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.get("/health")
        assert (response.status_code, (await response.get_json())["status"]) == (503, "loading")
        response = await client.get("/v1/models")
        assert response.status_code == 503
        assert_error(await response.get_json(), type="server_error", code="overloaded")
        release.set()
        for _ in range(100):
            if (await client.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await (await client.get("/health")).get_json())["status"] == "ok"


async def test_concurrent_first_requests_share_one_load_and_shutdown_closes_it(settings, store, backend):
    app = create_app(settings, store, loader=backend.load)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        names = ["tiny", "tiny:latest"] * 3
        responses = await asyncio.gather(*(client.post(CHAT, json=chat_body(model=m)) for m in names))
        assert [r.status_code for r in responses] == [200] * 6
        assert backend.loads == [("tiny", 4096, "auto")]  # the server's default num_ctx
        assert (await (await client.get("/health")).get_json())["models_loaded"] == ["tiny"]
    assert backend.generators[0].closed


async def test_changed_serving_settings_reload_the_model(client, store, backend):
    assert (await client.post(CHAT, json=chat_body())).status_code == 200
    store.write_config("tiny", ModelConfig(num_ctx=64, device="cpu"))
    assert (await client.post(CHAT, json=chat_body())).status_code == 200
    assert backend.loads == [("tiny", 4096, "auto"), ("tiny", 64, "cpu")]
    await asyncio.sleep(0.01)
    assert backend.generators[0].closed and not backend.generators[1].closed


async def test_client_disconnect_stops_the_generation(settings, store, backend):
    gate = asyncio.Event()  # the fake blocks before its first token until set
    backend.options = {"gate": gate}
    app = create_app(settings, store, loader=backend.load)
    async with app.test_app() as test_app:
        connection = test_app.test_client().request(CHAT, method="POST", headers={"Content-Type": "application/json"})
        async with connection:
            await connection.send(json.dumps(chat_body(stream=True)).encode())
            await connection.send_complete()
            first = await connection.receive()
            assert json.loads(sse_data(first.decode())[0])["choices"][0]["delta"]["role"] == "assistant"
            await connection.disconnect()
        assert backend.generators[0].stopped_early == 1


# ---- models ----------------------------------------------------------------
async def test_models_list_names_and_aliases_and_sees_store_changes(client, store):
    data = (await (await client.get("/v1/models")).get_json())["data"]
    assert [m["id"] for m in data] == ["embedder", "tiny", "tiny:latest", "org/tiny"]
    assert data[2]["object"] == "model" and data[2]["owned_by"] == "me" and isinstance(data[2]["created"], int)
    add_model(store, "late")
    assert "late" in [m["id"] for m in (await (await client.get("/v1/models")).get_json())["data"]]


@pytest.mark.parametrize("name", ["tiny", "tiny:latest", "org/tiny"])
async def test_retrieve_model(client, name):
    response = await client.get(f"/v1/models/{name}")
    assert response.status_code == 200 and (await response.get_json())["id"] == name


async def test_retrieve_unknown_model(client):
    response = await client.get("/v1/models/org/none:1b")
    assert response.status_code == 404
    assert_error(await response.get_json(), type="invalid_request_error", param="model", code="model_not_found")


# ---- shapes ----------------------------------------------------------------
async def test_chat_completion_shape_and_engine_request(client, backend):
    body = await (await client.post(CHAT, json=chat_body(model="tiny:latest", max_tokens=2, seed=3))).get_json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "tiny:latest" and body["system_fingerprint"].startswith("fp_ortserve_")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 0},  # OpenAI's shape: 0 when nothing was reused
    }
    request = backend.generators[0].requests[0]
    assert request.prompt.messages == [{"role": "system", "content": "Be terse."}, *USER]
    assert (request.params.temperature, request.params.max_tokens, request.params.seed) == (0.3, 2, 3)


async def test_chat_stream_chunks_with_usage(client):
    response = await client.post(CHAT, json=chat_body(stream=True, stream_options={"include_usage": True}))
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_data(await response.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"content": "!"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7  # "Be terse. hello there" + 3
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_completions_many_prompts_echo_and_summed_usage(client, backend):
    request = {"model": "tiny", "prompt": ["a", "b c"], "echo": True}
    body = await (await client.post("/v1/completions", json=request)).get_json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "aHello!"), (1, "b cHello!")]
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 6,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert backend.generators[0].requests[0].params.max_tokens == 50  # the model's configured default


async def test_completions_stream_many_prompts(client):
    response = await client.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": [[1, 2], [3]], "stream": True, "stream_options": {"include_usage": True}},
    )
    events = sse_data(await response.get_data(as_text=True))
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and chunks[-1]["usage"]["prompt_tokens"] == 3
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == "Hello!" and mine[-1]["finish_reason"] == "stop"


async def test_completions_suffix(client, backend):
    response = await client.post("/v1/completions", json={"model": "tiny", "prompt": "def f(", "suffix": "pass"})
    assert response.status_code == 400
    assert_error(await response.get_json(), type="invalid_request_error", param="suffix")
    backend.generators[0].fim_tokens = ("<P>", "<S>", "<M>")
    response = await client.post("/v1/completions", json={"model": "tiny", "prompt": "def f(", "suffix": "pass"})
    assert response.status_code == 200
    assert backend.generators[0].requests[-1].prompt.text == "<P>def f(<S>pass<M>"
