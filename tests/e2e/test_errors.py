"""Errors on a real server: OpenAI-shaped JSON with the right status, and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import CHAT_MODEL, EMBEDDER, MAX_REQUEST_BYTES, start_server, stop_server

HI = [{"role": "user", "content": "hi"}]
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def assert_error(body: dict, *, type: str, param=None, code=None) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (type, param, code)


@pytest.fixture(autouse=True)
def still_serving(client):
    """After every test here, however bad its requests, a normal request still succeeds."""
    yield
    response = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=2)
    assert response.choices[0].finish_reason in ("stop", "length")


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=HI)
    assert_error({"error": info.value.body}, type="invalid_request_error", param="model", code="model_not_found")


def test_model_of_another_task(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=EMBEDDER, prompt="hi")
    assert info.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": -0.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 0}, "n"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),  # not in the model's vocabulary
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}]},
            "messages.0.content.0",
        ),
    ],
)
def test_bad_requests_name_their_param(client, fields, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**{"model": CHAT_MODEL, "messages": HI, **fields})
    assert_error({"error": info.value.body}, type="invalid_request_error", param=param)


def test_not_supported_is_501_naming_the_param(client):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=CHAT_MODEL, messages=HI, functions=[{"name": "f"}])
    assert info.value.status_code == 501
    assert_error({"error": info.value.body}, type="invalid_request_error", param="functions", code="not_supported")


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_context(client, stream):
    long = [{"role": "user", "content": "hello " * 3000}]
    with pytest.raises(openai.BadRequestError) as info:  # a 400 also for stream=true: nothing was streamed yet
        client.chat.completions.create(model=CHAT_MODEL, messages=long, stream=stream)
    assert info.value.body["code"] == "context_length_exceeded"


def test_malformed_json_and_wrong_bodies(http):
    for body in (b'{"model": "tiny-llama", "messages": [', b"", b"[]"):
        response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert_error(response.json(), type="invalid_request_error")


def test_unknown_route_and_method(http):
    response = http.post("/v1/nothing")
    assert response.status_code == 404
    assert_error(response.json(), type="invalid_request_error", code="not_found")
    response = http.get("/v1/chat/completions")
    assert response.status_code == 405
    assert_error(response.json(), type="invalid_request_error", code="method_not_allowed")


def test_body_too_large(http):
    huge = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x" * MAX_REQUEST_BYTES}]})
    response = http.post("/v1/chat/completions", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert_error(response.json(), type="invalid_request_error", code="payload_too_large")


def test_raw_sse_wire_format(http):
    body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[0][len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"


@pytest.fixture(scope="module")
def locked_server(server_home, tmp_path_factory):
    server = start_server(server_home, tmp_path_factory.mktemp("e2e-auth") / "server.log", "--api-key", "sekrit")
    yield server
    stop_server(server)


def test_api_key(locked_server):
    assert httpx.get(f"{locked_server.base_url}/health").status_code == 200
    for key in ("wrong", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(f"{locked_server.base_url}/v1/models", headers=headers)
        assert response.status_code == 401
        assert_error(response.json(), type="authentication_error", code="invalid_api_key")
    with locked_server.client(api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    with locked_server.client(api_key="sekrit", max_retries=0) as client:
        assert CHAT_MODEL in [m.id for m in client.models.list().data]
