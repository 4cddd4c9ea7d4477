"""Tool calling on a real server, through the official openai client: forced calls, streaming
deltas the client rebuilds, a full round trip, and bad tool definitions.

Random weights follow no instruction: with tool_choice "required" or a named function
the calls are valid only because the grammar allows nothing else.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.conftest import CHAT_MODELS
from tests.e2e.conftest import CHAT_MODEL

ASK = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
    },
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER, "strict": True},
    },
    {
        "type": "function",
        "function": {"name": "add", "description": "Add two integers", "parameters": ADD, "strict": True},
    },
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


def create(client, **fields):
    return client.chat.completions.create(
        **{"model": CHAT_MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 300, **fields}
    )


def assert_valid_calls(message, names=SCHEMAS) -> None:
    assert message.tool_calls, message.content
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({call.id for call in message.tool_calls}) == len(message.tool_calls)


def calls_of(message) -> list[tuple[str, str]]:
    return [(call.function.name, call.function.arguments) for call in message.tool_calls or []]


@pytest.mark.parametrize("model", sorted(CHAT_MODELS))
def test_required_always_calls_valid_functions(client, model):
    for seed in (1, 2, 3):
        choice = create(client, model=model, tool_choice="required", seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert_valid_calls(choice.message)


def test_without_parallel_calls_exactly_one(client):
    for seed in (1, 2, 3, 4):
        choice = create(client, tool_choice="required", parallel_tool_calls=False, seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        assert_valid_calls(choice.message)


@pytest.mark.parametrize("name", ["add", "get_weather"])
def test_a_named_function_is_called_with_valid_arguments(client, name):
    for seed in (1, 2, 3):
        choice = create(client, tool_choice={"type": "function", "function": {"name": name}}, seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        assert_valid_calls(choice.message, names=[name])


def test_auto_leaves_the_choice_to_the_model(client):
    """Unconstrained random weights do not write a well-formed call: the reply is text."""
    choice = create(client, seed=1, max_tokens=40).choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize("seed", [1, 2, 3, 5])
def test_streamed_calls_accumulate_to_the_non_streamed_ones(client, seed):
    whole = create(client, tool_choice="required", seed=seed).choices[0]
    chunks = list(create(client, tool_choice="required", seed=seed, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    firsts = [d for d in deltas if d.id is not None]
    assert [d.index for d in firsts] == list(range(len(whole.message.tool_calls)))  # each call announced once
    assert all(d.type == "function" and d.function.name and d.function.arguments == "" for d in firsts)
    assert all(d.function.name is None for d in deltas if d.id is None)  # then only argument fragments
    rebuilt: dict[int, list[str]] = {}
    for d in deltas:
        entry = rebuilt.setdefault(d.index, ["", ""])
        entry[0] += d.function.name or ""
        entry[1] += d.function.arguments or ""
    assert [tuple(v) for _, v in sorted(rebuilt.items())] == calls_of(whole.message)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_clients_stream_helper_rebuilds_the_calls(client):
    kwargs = dict(model=CHAT_MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=2, max_tokens=300)
    whole = client.chat.completions.create(**kwargs).choices[0].message
    done = []
    with client.chat.completions.stream(**kwargs) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append((event.name, event.arguments, event.parsed_arguments))
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert calls_of(message) == calls_of(whole) == [(name, arguments) for name, arguments, _ in done]
    assert [parsed for *_, parsed in done] == [json.loads(arguments) for _, arguments in calls_of(whole)]
    assert final.choices[0].finish_reason == "tool_calls"


def test_a_full_round_trip(client):
    first = create(client, tool_choice={"type": "function", "function": {"name": "get_weather"}}, seed=4).choices[0]
    call = first.message.tool_calls[0]
    history = [
        *ASK,
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    answer = create(client, messages=history, seed=4, max_tokens=20)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    longer = [*history[:-1], {**history[-1], "content": history[-1]["content"] + " and a light breeze from the west"}]
    # the call and the tool's result went through the template into the prompt
    assert create(client, messages=longer, max_tokens=1).usage.prompt_tokens > answer.usage.prompt_tokens
    assert answer.usage.prompt_tokens > create(client, max_tokens=1).usage.prompt_tokens + 20
    forced = create(client, messages=history, tool_choice="required", seed=4).choices[0]  # and it can call again
    assert_valid_calls(forced.message)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools.0.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [{"type": "web_search", "function": {"name": "f"}}]}, "tools.0.type"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        (
            {
                "tools": [
                    *TOOLS,
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"not": {"type": "string"}}}},
                        },
                    },
                ],
                "tool_choice": "required",
            },
            "tools.2.function.parameters",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}},
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools.0.function.parameters",
        ),
        ({"tool_choice": {"type": "function", "function": {"name": "unknown"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"messages": [*ASK, {"role": "tool", "content": "42"}]}, "messages.1.tool_call_id"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_tool_definitions_are_a_400_naming_the_param(client, fields, param, stream):
    fields = {"tools": TOOLS, **fields}
    if fields["tools"] is None:
        del fields["tools"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=CHAT_MODEL, messages=fields.pop("messages", ASK), stream=stream, **fields)
    assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error"


def test_auto_with_a_json_schema_gives_calls_or_that_json(client):
    answer = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": answer}}
    kinds = set()
    for seed in range(1, 7):
        choice = create(client, response_format=fmt, seed=seed).choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            assert_valid_calls(choice.message)
            kinds.add("calls")
        else:
            assert choice.finish_reason == "stop"
            jsonschema.validate(json.loads(choice.message.content), answer)
            kinds.add("json")
    assert kinds == {"calls", "json"}  # the grammar offers both; these seeds take each road at least once
