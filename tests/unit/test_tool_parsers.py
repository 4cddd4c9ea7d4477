"""Tool-call formats: which one a model gets, and reading calls out of text, whole or streamed."""

from __future__ import annotations

import json
import random

import pytest

from ortserve.conversion.demo import chat_template
from ortserve.server.chat.tool_parsers import (
    TOOL_PARSERS,
    GenericToolParser,
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    Phi4ToolParser,
    ToolParser,
    register_tool_parser,
    select_tool_parser,
)
from ortserve.server.chat.tool_stream import ArgumentsDelta, CallStarted, Content, ToolCallStream, parse_tool_calls

ARGS = '{"city": "Paris", "days": [1, {"x": "}]\\""}], "unit": null}'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def calls_of(parser, text, **kwargs):
    reply = parse_tool_calls(parser, text, **kwargs)
    return reply.content, [(c.name, c.arguments) for c in reply.tool_calls]


# ---- choosing a format ---------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "family", "expected"),
    [
        (chat_template(), "llama3", HermesToolParser),  # the template wins over the family
        ("{% if tools %}...[TOOL_CALLS]...{% endif %}", "llama3", MistralToolParser),
        ("{% if tools %}<|tool|>{{ message['tools'] }}<|/tool|>{% endif %}", "phi", Phi4ToolParser),
        ("{%- if tools %}<|python_tag|>{% endif %}", "llama3", Llama3JsonToolParser),
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}", "llama3", Llama3JsonToolParser),  # by family
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}", "hermes", HermesToolParser),
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}", "gemma", GenericToolParser),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "hermes", GenericToolParser),  # no tools in it
        (None, "llama3", GenericToolParser),
    ],
)
def test_format_from_template_then_family(template, family, expected):
    assert select_tool_parser(template, family) is expected


def test_the_registry_refuses_a_second_format_under_one_name():
    assert set(TOOL_PARSERS) >= {"hermes", "llama3_json", "mistral", "phi4", "generic"}
    with pytest.raises(ValueError, match="twice"):
        register_tool_parser("hermes")(type("Again", (ToolParser,), {}))


# ---- whole replies -------------------------------------------------------------
@pytest.mark.parametrize(
    ("parser", "text"),
    [
        (HermesToolParser, f'<tool_call>\n{{"name": "get_weather", "arguments": {ARGS}}}\n</tool_call>'),
        (MistralToolParser, f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {ARGS}}}]'),
        (Phi4ToolParser, f'<|tool_call|>[{{"name": "get_weather", "arguments": {ARGS}}}]<|/tool_call|>'),
        (Llama3JsonToolParser, f'{{"name": "get_weather", "parameters": {ARGS}}}'),
        (Llama3JsonToolParser, f'<|python_tag|>{{"name": "get_weather", "parameters": {ARGS}}}'),
        (GenericToolParser, f'<tool_call>{{"name": "get_weather", "arguments": {ARGS}}}</tool_call>'),
    ],
)
def test_each_format_reads_its_calls_with_the_exact_arguments_text(parser, text):
    assert calls_of(parser, text, tool_names=["get_weather"]) == (None, [("get_weather", ARGS)])


def test_several_calls_content_before_and_after():
    one = '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>'
    two = '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>'
    text = f"Let me look.\n{one}\n{two}\nDone."
    assert calls_of(HermesToolParser, text) == ("Let me look.Done.", [("a", '{"x": 1}'), ("b", "{}")])
    mistral = '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]'
    assert calls_of(MistralToolParser, mistral)[1] == [("a", '{"x": 1}'), ("b", "{}")]
    llama = '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
    assert calls_of(Llama3JsonToolParser, llama, tool_names=["a", "b"])[1] == [("a", '{"x": 1}'), ("b", "{}")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<tool_call>\n{"arguments": {"x": 1}, "name": "a"}\n</tool_call>', ("a", '{"x": 1}')),  # name last
        (
            '<tool_call>{"type": "function", "function": {"name": "a", "arguments": {"x": 1}}}</tool_call>',
            ("a", '{"x": 1}'),
        ),  # nested
        ('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>', ("a", '{"x": 1}')),  # a JSON string
        ('<tool_call>{"name": "a"}</tool_call>', ("a", "{}")),  # no arguments
        ('<tool_call>{"name": "a", "arguments": {"x": [1, 2', ("a", '{"x": [1, 2')),  # cut off: what there is
    ],
)
def test_call_shapes_models_write(text, expected):
    assert calls_of(HermesToolParser, text)[1] == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "Use <tool_call> blocks to call tools.",
        "<tool_call> not json </tool_call>",
        '<tool_call>{"x": 1}</tool_call>',
        "I would write <tool_",
    ],
)
def test_a_marker_without_a_call_is_plain_content(text):
    assert calls_of(HermesToolParser, text) == (text, [])


def test_bare_json_is_a_call_only_for_a_known_function():
    assert calls_of(Llama3JsonToolParser, '{"name": "get_weather", "parameters": {}}', tool_names=["get_weather"])[1]
    answer = '{"name": "Ada", "parameters": {"age": 36}}'
    assert calls_of(Llama3JsonToolParser, answer, tool_names=["get_weather"]) == (answer, [])
    assert calls_of(Llama3JsonToolParser, "  Hello {x}", tool_names=["get_weather"]) == ("  Hello {x}", [])


def test_calls_beyond_max_calls_are_dropped():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert calls_of(HermesToolParser, text, max_calls=1) == (None, [("a", "{}")])


def test_every_call_gets_a_fresh_id_in_the_format_a_template_accepts():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "a", "arguments": {}}</tool_call>'
    ids = [c.id for c in parse_tool_calls(HermesToolParser, text).tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    mistral = parse_tool_calls(MistralToolParser, '[TOOL_CALLS][{"name": "a", "arguments": {}}]').tool_calls[0]
    assert len(mistral.id) == 9 and mistral.id.isalnum()


# ---- streaming -----------------------------------------------------------------
def stream_pieces(parser, pieces, **kwargs):
    stream = ToolCallStream(parser, **kwargs)
    events = [e for piece in pieces for e in stream.feed(piece)] + stream.finish()
    return events


def rebuild(events):
    content, calls = "", {}
    for event in events:
        if isinstance(event, Content):
            content += event.text
        elif isinstance(event, CallStarted):
            assert event.index not in calls and event.index == len(calls)  # announced once, in order
            calls[event.index] = [event.name, ""]
        else:
            calls[event.index][1] += event.text
    return content, [tuple(c) for c in calls.values()]


@pytest.mark.parametrize("seed", range(20))
def test_streamed_pieces_rebuild_what_the_whole_text_gives(seed):
    rng = random.Random(seed)
    text = (
        f'Sure.\n<tool_call>\n{{"name": "get_weather", "arguments": {ARGS}}}\n</tool_call>\n'
        '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    )
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 30)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    whole = parse_tool_calls(HermesToolParser, text)
    assert rebuild(stream_pieces(HermesToolParser, pieces)) == (
        whole.content or "",
        [(c.name, c.arguments) for c in whole.tool_calls],
    )


def test_the_name_comes_first_then_arguments_as_they_arrive():
    pieces = [
        "<tool_",
        "call>\n{",
        '"name": "get_w',
        'eather", "argu',
        'ments": {"ci',
        'ty": "Par',
        'is"}}',
        "\n</tool_call>",
    ]
    stream = ToolCallStream(HermesToolParser)
    out = [stream.feed(p) for p in pieces] + [stream.finish()]
    assert out[:3] == [[], [], []]
    assert [type(e) for e in out[3]] == [CallStarted] and out[3][0].name == "get_weather"
    fragments = [e.text for step in out[4:] for e in step if isinstance(e, ArgumentsDelta)]
    assert fragments == ['{"ci', 'ty": "Par', 'is"}'] and "".join(fragments) == '{"city": "Paris"}'


def test_text_that_might_start_a_marker_is_held_back_then_released():
    stream = ToolCallStream(HermesToolParser)
    assert stream.feed("a <tool") == [Content("a")]
    assert stream.feed("kit") == [Content(" <toolkit")]
    assert stream.finish() == []


# ---- templates that cannot show tools: the generic format ------------------------
def test_generic_format_describes_tools_and_rewrites_the_history():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    out, tools = GenericToolParser.prepare(messages, TOOLS)
    assert tools is None  # the template gets no tools: it could not render them
    assert out[0]["content"].startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in out[0]["content"]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert out[2] == {"role": "assistant", "content": call}
    assert out[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    assert calls_of(GenericToolParser, call) == (None, [("get_weather", '{"city": "Paris"}')])


def test_phi4_puts_the_tools_in_the_system_message():
    out, tools = Phi4ToolParser.prepare([{"role": "user", "content": "hi"}], TOOLS)
    assert out[0]["role"] == "system" and json.loads(out[0]["tools"]) == [TOOLS[0]["function"]]
    assert tools == TOOLS


def test_markers_a_parser_needs_to_see():
    assert set(HermesToolParser.special_texts()) == {"<tool_call>", "</tool_call>"}
    assert set(Phi4ToolParser.special_texts()) >= {"<|tool_call|>", "<|/tool_call|>"}
    assert MistralToolParser.special_texts() == ("[TOOL_CALLS]",)
