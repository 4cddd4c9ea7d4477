"""Schemas and tool definitions are bounded before they reach the grammar compiler (issue #13, item 1).

The bodies are the ones that grew a runner to 21 GB: now each is a 400 naming the parameter path and the
limit, and the server keeps serving. The limits themselves are in ortserve.server.chat.schema_limits.
"""

from __future__ import annotations

import pytest

from ortserve.core.store import ModelStore
from ortserve.server.chat.schema_limits import MAX_COUNT, MAX_DEPTH, MAX_TOTAL_COUNT, check_schema
from ortserve.server.errors import InvalidRequestError
from tests.unit.fake_app import CHAT, add_model, assert_error, chat_body

COMPLETIONS = "/v1/completions"
HUGE = {"type": "array", "items": {"type": "integer"}, "minItems": 1000000000}


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.models_dir)
    add_model(store, "tiny")
    return store


def json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def tool(name: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body(max_tokens=16, response_format=json_schema(HUGE))),
        ("/v1/chat/completions", chat_body(response_format=json_schema({**HUGE, "minItems": 1, "maxItems": 10**9}))),
        ("/v1/completions", {"model": "tiny", "prompt": "hi", "response_format": json_schema(HUGE)}),
    ],
)
async def test_the_issue_bodies_are_400s_naming_the_path(client, path, body):
    response = await client.post(path, json=body)
    assert response.status_code == 400
    error = await response.get_json()
    key = "maxItems" if body["response_format"]["json_schema"]["schema"].get("maxItems") else "minItems"
    assert_error(error, type="invalid_request_error", param=f"response_format.json_schema.schema.{key}")
    assert f"{MAX_COUNT:,}" in error["error"]["message"]
    assert (await client.post(CHAT, json=chat_body())).status_code == 200


async def test_a_required_tools_parameters_are_bounded(client):
    parameters = {"type": "object", "properties": {"xs": HUGE}}
    body = chat_body(tools=[tool("f", {"type": "object"}), tool("g", parameters)], tool_choice="required")
    response = await client.post(CHAT, json=body)
    assert response.status_code == 400
    assert_error(
        await response.get_json(),
        type="invalid_request_error",
        param="tools.1.function.parameters.properties.xs.minItems",
    )


@pytest.mark.parametrize("settings", [{"max_request_bytes": 64 * 1024}], indirect=True)
async def test_a_schema_nested_200_levels_says_so(client):
    schema: dict = {"type": "integer"}
    for _ in range(200):
        schema = {"type": "array", "items": schema}
    response = await client.post(CHAT, json=chat_body(response_format=json_schema(schema)))
    assert response.status_code == 400
    message = (await response.get_json())["error"]["message"]
    assert "nests JSON more than 200 levels" in message and "could not parse" not in message


def test_limits_allow_real_schemas_and_refuse_what_is_past_them():
    real = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 20},
            "id": {"type": "integer", "minimum": 0, "maximum": 10**12},
        },
        "required": ["tags"],
    }
    check_schema(real, "p")
    check_schema({"type": "array", "maxItems": MAX_COUNT}, "p")
    with pytest.raises(InvalidRequestError) as caught:
        check_schema({"type": "array", "maxItems": MAX_COUNT + 1}, "p")
    assert caught.value.param == "p.maxItems"
    many = {"type": "object", "properties": {f"a{i}": {"type": "array", "maxItems": MAX_COUNT} for i in range(5)}}
    with pytest.raises(InvalidRequestError, match=f"{MAX_TOTAL_COUNT:,}"):
        check_schema(many, "p")
    deep: dict = {"type": "integer"}
    for _ in range(MAX_DEPTH + 1):
        deep = {"not": deep}
    with pytest.raises(InvalidRequestError, match="nest at most"):
        check_schema(deep, "p")
    with pytest.raises(InvalidRequestError, match="bytes"):
        check_schema({"enum": ["x" * 1000] * 300}, "p")
