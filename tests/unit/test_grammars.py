"""Grammars from request pieces (pure): which requests are constrained, and how.

That llguidance compiles them and that the tiny models follow them is checked in
tests/integration/test_guidance.py.
"""

from __future__ import annotations

import json

import pytest

from ortserve.server.chat.grammars import JSON_STYLE, chat_guidance, response_format_guidance, schema_text
from ortserve.server.chat.tool_parsers import HermesToolParser, Llama3JsonToolParser, MistralToolParser

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "now"}},
]


def test_schemas_get_compact_json_unless_they_say_otherwise():
    assert json.loads(schema_text({"type": "object"}))["x-guidance"] == JSON_STYLE
    own = json.loads(schema_text({"type": "object", "x-guidance": {"whitespace_flexible": True}}))
    assert own["x-guidance"] == {**JSON_STYLE, "whitespace_flexible": True}


def test_response_formats():
    assert response_format_guidance(None) is None
    assert response_format_guidance({"type": "text"}) is None
    json_object = response_format_guidance({"type": "json_object"})
    assert (json_object.kind, json_object.param) == ("json_schema", "response_format")
    assert json.loads(json_object.data)["type"] == "object"
    spec = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}
    schema = response_format_guidance(spec)
    assert json.loads(schema.data)["properties"] == WEATHER["properties"]
    assert [(p.param, p.label) for p in schema.parts] == [("response_format.json_schema.schema", "response_format 'w'")]


@pytest.mark.parametrize("choice", [None, "auto", "none"])
def test_the_model_writes_freely_unless_calls_are_forced(choice):
    assert chat_guidance(HermesToolParser, tools=TOOLS, tool_choice=choice) is None
    assert chat_guidance(HermesToolParser, tools=None, tool_choice=None) is None


def test_tool_choice_none_keeps_the_response_format():
    guidance = chat_guidance(HermesToolParser, tools=TOOLS, tool_choice="none", response_format={"type": "json_object"})
    assert guidance.kind == "json_schema"


def test_required_forces_calls_in_the_models_own_format():
    guidance = chat_guidance(HermesToolParser, tools=TOOLS, tool_choice="required")
    assert (guidance.kind, guidance.param) == ("lark_grammar", "tool_choice")
    grammar = guidance.data
    assert grammar.startswith("start: calls\n")
    assert "call (separator call)*" in grammar and "call: call_0 | call_1" in grammar
    head = '"{\\"name\\": \\"get_weather\\", \\"arguments\\": "'
    assert f'call_0: "<tool_call>" "\\n" {head} args_0 "}}" "\\n" "</tool_call>"' in grammar
    args = {
        line.split(": %json ")[0]: json.loads(line.split(": %json ")[1])
        for line in grammar.splitlines()
        if "%json" in line
    }
    assert args["args_0"]["properties"] == WEATHER["properties"] and args["args_0"]["x-guidance"] == JSON_STYLE
    assert args["args_1"]["additionalProperties"] is False  # omitted parameters: no arguments at all
    assert [p.param for p in guidance.parts] == ["tools.0.function.parameters", "tools.1.function.parameters"]


def test_without_parallel_calls_exactly_one():
    guidance = chat_guidance(HermesToolParser, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert "calls: call\n" in guidance.data
    assert "separator call" not in guidance.data


def test_a_named_function_is_the_only_choice():
    named = {"type": "function", "function": {"name": "now"}}
    guidance = chat_guidance(HermesToolParser, tools=TOOLS, tool_choice=named)
    assert "call: call_1\n" in guidance.data and "call_0" not in guidance.data
    assert "separator call" not in guidance.data
    assert [p.param for p in guidance.parts] == ["tools.1.function.parameters"]


def test_formats_with_a_list_and_special_tokens():
    guidance = chat_guidance(MistralToolParser, tools=TOOLS, tool_choice="required", special_tokens={"[TOOL_CALLS]": 9})
    assert 'calls: <[9]> "[" call (separator call)* "]"' in guidance.data
    assert 'separator: ", "' in guidance.data
    llama = chat_guidance(Llama3JsonToolParser, tools=TOOLS, tool_choice="required").data
    assert '"{\\"name\\": \\"now\\", \\"parameters\\": " args_1' in llama and 'separator: "; "' in llama


def test_auto_with_a_json_format_allows_calls_or_that_json():
    spec = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    guidance = chat_guidance(HermesToolParser, tools=TOOLS, tool_choice="auto", response_format=spec)
    assert guidance.data.startswith("start: calls | answer\n") and "answer: %json " in guidance.data
    assert guidance.param == "response_format"
    assert guidance.parts[-1].param == "response_format.json_schema.schema"


def test_forced_calls_win_over_a_response_format():
    json_object = {"type": "json_object"}
    guidance = chat_guidance(HermesToolParser, tools=TOOLS, tool_choice="required", response_format=json_object)
    assert guidance.data.startswith("start: calls\n")
