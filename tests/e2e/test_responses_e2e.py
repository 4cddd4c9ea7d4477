"""/v1/responses on a real server through the openai client's `responses` API: plain and structured replies,
a stream its accumulator rebuilds into the unstreamed response, a function-calling round trip continued with
`previous_response_id`, and reading back and deleting stored responses.

Random weights follow no instruction: the JSON and the calls are valid only because the grammar allows nothing
else (the same grammars as /v1/chat/completions).
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.e2e.conftest import CHAT_MODEL

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "sunny": {"type": "boolean"},
        "wind": {"enum": ["none", "light", "strong"]},
    },
    "required": ["city", "sunny", "wind"],
    "additionalProperties": False,
}
FORMAT = {"format": {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}]


def test_a_string_input(client):
    response = client.responses.create(model=CHAT_MODEL, input="Say this is a test", max_output_tokens=8)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == CHAT_MODEL
    assert response.status in ("completed", "incomplete") and isinstance(response.output_text, str)
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    if response.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"


def test_messages_with_instructions_and_a_json_schema(client):
    response = client.responses.create(
        model=CHAT_MODEL,
        instructions="Answer in JSON.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "The weather in Paris?"}]}],
        text=FORMAT,
        max_output_tokens=300,
    )
    assert response.status == "completed" and response.text.format.type == "json_schema"
    jsonschema.validate(json.loads(response.output_text), WEATHER)


def test_the_stream_rebuilds_the_unstreamed_response(client):
    request = dict(model=CHAT_MODEL, input="The weather in Paris?", text=FORMAT, temperature=0, max_output_tokens=300)
    whole = client.responses.create(**request)
    deltas, numbers = [], []
    with client.responses.stream(**request) as stream:
        for event in stream:
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert numbers == list(range(len(numbers)))
    assert final.output_text == "".join(deltas) == whole.output_text
    assert final.id != whole.id and final.usage.output_tokens == whole.usage.output_tokens
    jsonschema.validate(json.loads(final.output_text), WEATHER)


def test_a_function_calling_round_trip(client):
    first = client.responses.create(
        model=CHAT_MODEL,
        input="What is the weather in Paris?",
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=300,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert (
        first.status == "completed"
        and len(calls) == 1
        and all(call.name == "get_weather" and call.call_id.startswith("call_") for call in calls)
    )
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), WEATHER)
    results = [{"type": "function_call_output", "call_id": c.call_id, "output": '{"sky": "blue"}'} for c in calls]
    second = client.responses.create(
        model=CHAT_MODEL, previous_response_id=first.id, input=results, tools=TOOLS, max_output_tokens=8
    )
    assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
    # the continued conversation reached the model: its prompt holds the calls and their results
    assert second.usage.input_tokens > first.usage.input_tokens


def test_retrieve_delete_and_unknown_ids(client):
    created = client.responses.create(model=CHAT_MODEL, input="hi", max_output_tokens=4, metadata={"k": "v"})
    again = client.responses.retrieve(created.id)
    assert again.model_dump() == created.model_dump() and again.metadata == {"k": "v"}
    client.responses.delete(created.id)
    for call in (client.responses.retrieve, client.responses.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(created.id)
        assert caught.value.body["param"] == "response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=CHAT_MODEL, input="hi", previous_response_id="resp_unknown")
