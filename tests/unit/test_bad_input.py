"""Bad and unusual input through `app.test_app()`: OpenAI's error JSON with the right status, the server keeps
serving, and values at the edge of the valid ranges reach the engine as something it can run.

The engine is the fake of tests/unit/fake_app.py (it records each request's parameters); what a real model does
with the same requests is in tests/e2e/test_bad_input_e2e.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from ortserve.core.model_config import SamplingDefaults
from ortserve.core.store import ModelStore
from ortserve.server.app import create_app
from ortserve.server.engine.logits import FLOOR, entry
from ortserve.server.errors import InvalidRequestError
from ortserve.server.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_request
from ortserve.server.protocol.completions import MAX_GENERATIONS
from tests.unit.fake_app import CHAT, FakeBackend, add_model, assert_error, chat_body

COMPLETIONS = "/v1/completions"
VOCAB = 100  # the fake model's genai_config.json says so


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.models_dir)
    add_model(store, "tiny")
    config = {"model": {"vocab_size": VOCAB, "context_length": 64}}
    (store.models_dir / "tiny" / "genai_config.json").write_text(json.dumps(config))
    return store


def engine_params(backend: FakeBackend):
    return backend.generators[0].requests[-1].params


# ---- bodies that are not a request -------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'"a string"',
        b"null",
        b"1e309",
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',  # not UTF-8
        b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}',  # a lone surrogate
        b'{"model": "tiny", "messages": ' + b"[" * 600 + b"]" * 600 + b"}",  # nested past the parser's limit
    ],
)
async def test_bodies_that_are_not_a_request_are_400_and_the_server_keeps_serving(client, body):
    for content_type in ("application/json", "text/plain"):
        response = await client.post(CHAT, data=body, headers={"Content-Type": content_type})
        assert response.status_code == 400
        assert_error(await response.get_json(), type="invalid_request_error")
    assert (await client.post(CHAT, json=chat_body())).status_code == 200


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (CHAT, {"n": 2**70}, "n"),
        (CHAT, {"max_tokens": 1e309}, "max_tokens"),
        (CHAT, {"temperature": float("nan")}, "temperature"),  # json.dumps writes NaN, as some clients do
        (CHAT, {"top_p": float("-inf")}, "top_p"),
        (CHAT, {"keep_alive": float("inf")}, "keep_alive"),
        (CHAT, {"logprobs": True, "top_logprobs": 2**70}, "top_logprobs"),
        (CHAT, {"seed": "1"}, "seed"),
        (CHAT, {"logit_bias": {"1": 1e300}}, "logit_bias"),
        (CHAT, {"logit_bias": {"1e3": 1}}, "logit_bias"),
        (CHAT, {"messages": "hi"}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (CHAT, {"messages": [{"role": "tool", "content": "42"}]}, "messages.0.tool_call_id"),
        (
            CHAT,
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "tools.0.function.parameters",
        ),
        (CHAT, {"stop": [str(i) for i in range(10)]}, "stop"),
        (COMPLETIONS, {"best_of": 2**70}, "best_of"),
        (COMPLETIONS, {"logprobs": 2**70}, "logprobs"),
        (COMPLETIONS, {"prompt": []}, "prompt"),
    ],
)
async def test_out_of_range_and_wrong_types_name_their_param(client, path, fields, param):
    body = chat_body(**fields) if path == CHAT else {"model": "tiny", "prompt": "hi", **fields}
    response = await client.post(path, data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert_error(await response.get_json(), type="invalid_request_error", param=param)


@pytest.mark.parametrize("fields", [{"input": []}, {"input": [""]}, {"input": [[1], "a"]}, {"dimensions": 0}])
def test_bad_embedding_inputs_name_input_or_dimensions(fields):
    with pytest.raises(InvalidRequestError) as info:
        parse_request(EmbeddingRequest, {"model": "e", "input": "hi", **fields})
    assert info.value.param == next(iter(fields))


# too long as a file name, once quoted ("%3A", "%C3%A9")
@pytest.mark.parametrize("name", ["x" * 300, ":" * 100, "é" * 100], ids=["ascii", "colons", "accents"])
async def test_a_model_name_too_long_for_a_file_is_an_unknown_model(client, name):
    # it was a 500 (OSError: File name too long) with a traceback in the log
    for response in (await client.post(CHAT, json=chat_body(model=name)), await client.get(f"/v1/models/{name}")):
        assert response.status_code == 404
        assert_error(await response.get_json(), type="invalid_request_error", param="model", code="model_not_found")


# ---- values the engine cannot take as they are ----------------------------------------------------------
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(("top_k", "sent"), [(VOCAB - 1, VOCAB - 1), (VOCAB, 0), (100_000, 0), (2**70, 0)])
async def test_top_k_past_the_vocabulary_is_no_cut(client, backend, path, top_k, sent):
    # onnxruntime-genai refuses a top_k over the vocabulary size ("top_k (100000) must be less than or equal to
    # vocab_size") and one past int32 (a pybind11 cast error): both were a 500
    body = chat_body(top_k=top_k) if path == CHAT else {"model": "tiny", "prompt": "hi", "top_k": top_k}
    response = await client.post(path, json=body)
    assert response.status_code == 200
    assert engine_params(backend).top_k == sent


@pytest.mark.parametrize("temperature", [1e-300, 1e-40, 9e-6])
def test_a_temperature_float32_cannot_divide_by_is_greedy(temperature):
    # dividing float32 logits by 1e-300 gave inf, and NaN logprobs in the response (not JSON)
    for request in (
        parse_request(ChatCompletionRequest, chat_body(temperature=temperature)),
        parse_request(CompletionRequest, {"model": "m", "prompt": "hi", "temperature": temperature}),
    ):
        params = request.to_sampling_params()
        assert (params.temperature, params.top_p) == (0.0, 1.0)
    assert parse_request(ChatCompletionRequest, chat_body(temperature=1e-5)).to_sampling_params().temperature == 1e-5


async def test_a_repetition_penalty_float32_cannot_divide_by_is_a_400(client):
    response = await client.post(CHAT, json=chat_body(repetition_penalty=1e-320))
    assert response.status_code == 400
    assert_error(await response.get_json(), type="invalid_request_error", param="repetition_penalty")
    assert (await client.post(CHAT, json=chat_body(repetition_penalty=1e-5))).status_code == 200


def test_a_model_default_repetition_penalty_float32_cannot_divide_by_is_refused():
    # a Modelfile `PARAMETER repeat_penalty 1e-320` would give NaN logprobs like the request field
    with pytest.raises(ValidationError):
        SamplingDefaults(repetition_penalty=1e-320)
    assert SamplingDefaults(repetition_penalty=1e-5).repetition_penalty == 1e-5


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_a_logprob_json_cannot_carry_is_reported_as_the_floor(value):
    # an fp16 model whose logits overflow: the response must stay JSON (which has no NaN or -inf)
    row = np.array([0.0, value], dtype=np.float32)
    got = entry(row, 1, 1, lambda t: (str(t), b""))
    assert got.logprob == FLOOR and [t.logprob for t in got.top] == [0.0]


async def test_a_batch_past_the_generation_limit_is_a_400(client, backend):
    prompts = ["hi"] * (MAX_GENERATIONS // 4 + 1)
    response = await client.post(COMPLETIONS, json={"model": "tiny", "prompt": prompts, "n": 4})
    assert response.status_code == 400
    error = await response.get_json()
    assert_error(error, type="invalid_request_error", param="prompt")
    assert f"at most {MAX_GENERATIONS:,}" in error["error"]["message"]
    assert not backend.generators  # refused before any generation was queued
    at_limit = {"model": "tiny", "prompt": ["hi"] * (MAX_GENERATIONS // 4), "n": 4, "max_tokens": 1}
    assert (await client.post(COMPLETIONS, json=at_limit)).status_code == 200


# ---- browsers ---------------------------------------------------------------------------------------------
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",  # what the openai clients send
}


@pytest.fixture
async def locked_client(settings, store, backend):
    app = create_app(settings.model_copy(update={"api_key": "sekrit"}), store, loader=backend.load)
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.mark.parametrize("origin", ["http://localhost:3000", "https://127.0.0.1", "http://[::1]:5173"])
async def test_a_browser_app_on_this_machine_passes_cors(locked_client, origin):
    # the preflight carries no API key: it was a 401, and no response said the page may read it
    response = await locked_client.options(CHAT, headers={"Origin": origin, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"] == PREFLIGHT["Access-Control-Request-Headers"]
    assert "Origin" in response.headers["Vary"]
    ok = await locked_client.post(CHAT, json=chat_body(), headers={"Origin": origin, "Authorization": "Bearer sekrit"})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == origin
    refused = await locked_client.post(CHAT, json=chat_body(), headers={"Origin": origin})  # errors are readable too
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example", "null", "http://[::1"])
async def test_other_sites_are_refused_without_cors_headers(locked_client, origin):
    response = await locked_client.options(CHAT, headers={"Origin": origin, **PREFLIGHT})
    assert response.status_code == 403 and "Access-Control-Allow-Origin" not in response.headers
    response = await locked_client.get("/v1/models", headers={"Origin": origin, "Authorization": "Bearer sekrit"})
    assert response.status_code == 403 and "Access-Control-Allow-Origin" not in response.headers
    assert_error(await response.get_json(), type="invalid_request_error", code="forbidden")
