"""JSON mode and JSON schemas on a real server, through the official openai client.

The tiny models have random weights: they follow no instruction, so JSON comes out
only because the grammar allows nothing else. Each test also has its control (the
same request without the grammar gives no JSON), so it can fail for a real reason.
"""

from __future__ import annotations

import json
from typing import Literal

import jiter
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import CHAT_MODELS
from tests.e2e.conftest import CHAT_MODEL

ASK = [{"role": "user", "content": "Describe the weather in Paris as JSON."}]
SEEDS = range(1, 9)
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "temperature": {"type": "integer", "minimum": -50, "maximum": 60},
        "sunny": {"type": "boolean"},
        "wind": {"enum": ["none", "light", "strong"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["city", "temperature", "sunny", "wind", "tags"],
    "additionalProperties": False,
}
WEATHER_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}


def is_json_prefix(text: str) -> bool:
    try:
        jiter.from_json(text.encode(), partial_mode="trailing-strings")
    except ValueError:
        return False
    return True


def test_json_mode_replies_are_json_objects(client):
    finished = 0
    for seed in SEEDS:
        response = client.chat.completions.create(
            model=CHAT_MODEL, messages=ASK, response_format={"type": "json_object"}, seed=seed, max_tokens=200
        )
        choice = response.choices[0]
        if choice.finish_reason == "stop":  # the grammar completed: one JSON object, then the end
            assert isinstance(json.loads(choice.message.content), dict), choice.message.content
            finished += 1
        else:  # cut by max_tokens (as with OpenAI): still JSON as far as it went
            assert choice.finish_reason == "length" and is_json_prefix(choice.message.content)
    assert finished >= 2


def test_without_json_mode_the_same_requests_are_not_json(client):
    replies = [
        client.chat.completions.create(model=CHAT_MODEL, messages=ASK, seed=seed, max_tokens=40).choices[0]
        for seed in SEEDS
    ]
    # random text is rarely a JSON prefix (a lone number can be): at most one of the eight
    assert sum(is_json_prefix(r.message.content) for r in replies) <= 1, [r.message.content for r in replies]


@pytest.mark.parametrize("model", sorted(CHAT_MODELS))
def test_json_schema_replies_validate(client, model):
    for seed in (1, 2, 3):
        response = client.chat.completions.create(
            model=model, messages=ASK, response_format=WEATHER_FORMAT, seed=seed, max_tokens=300
        )
        choice = response.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        value = json.loads(choice.message.content)
        jsonschema.validate(value, WEATHER)
        assert choice.message.content == json.dumps(value, ensure_ascii=False)  # compact, no runaway whitespace


def test_json_schema_stream_equals_the_response(client):
    kwargs = dict(model=CHAT_MODEL, messages=ASK, response_format=WEATHER_FORMAT, seed=7, max_tokens=300)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(whole), WEATHER)


class Forecast(BaseModel):
    day: Literal["mon", "tue", "wed"]
    high: int = Field(ge=-20, le=45)
    note: str = Field(max_length=12)


class Report(BaseModel):
    city: str = Field(max_length=16)
    forecasts: list[Forecast] = Field(max_length=2)


def test_the_clients_parse_helper_gets_its_pydantic_model(client):
    for seed in (1, 2):
        response = client.chat.completions.parse(
            model=CHAT_MODEL, messages=ASK, response_format=Report, seed=seed, max_tokens=300
        )
        message = response.choices[0].message
        assert isinstance(message.parsed, Report), message.content
        assert message.parsed == Report.model_validate_json(message.content)


def test_completions_json_mode(client):
    for seed in (1, 2, 3):
        response = client.completions.create(
            model=CHAT_MODEL,
            prompt="The weather:",
            max_tokens=300,
            seed=seed,
            extra_body={"response_format": WEATHER_FORMAT},
        )
        assert response.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(response.choices[0].text), WEATHER)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "objekt"}, "objekt"),
        ({"type": "string", "pattern": "(?=a)a"}, "look-around"),
    ],
)
def test_a_schema_llguidance_cannot_enforce_is_a_400_naming_it(client, stream, schema, words):
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as info:  # also when streaming: nothing was sent yet
        client.chat.completions.create(model=CHAT_MODEL, messages=ASK, response_format=bad, stream=stream)
    body = info.value.body
    assert body["param"] == "response_format.json_schema.schema" and body["type"] == "invalid_request_error"
    assert words in body["message"] and "'bad'" in body["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}},
            "response_format.json_schema.name",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_object"}, "min_tokens": 3}, "min_tokens"),
    ],
)
def test_malformed_response_formats_name_their_param(client, fields, param):
    extra = {"min_tokens": fields.pop("min_tokens")} if "min_tokens" in fields else {}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=CHAT_MODEL, messages=ASK, extra_body=extra, **fields)
    assert info.value.body["param"] == param
