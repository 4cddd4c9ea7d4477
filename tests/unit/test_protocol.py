"""The protocol layer alone: validation to OpenAI errors, engine parameters, prompts, chunk shapes."""

from __future__ import annotations

import json

import pytest

from ortserve.core.model_config import SamplingDefaults
from ortserve.server.engine.generation import Prompt, SamplingParams
from ortserve.server.errors import InvalidRequestError, NotSupportedError
from ortserve.server.protocol import (
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    CompletionRequest,
    DeltaMessage,
    parse_request,
)

USER = [{"role": "user", "content": "hi"}]


def chat(**fields) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, json.dumps({"model": "m", "messages": USER, **fields}))


def completion(**fields) -> CompletionRequest:
    return parse_request(CompletionRequest, json.dumps({"model": "m", "prompt": "hi", **fields}))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [*USER, {"role": "user", "content": 5}]}, "messages.1.content"),
        ({"messages": [{"role": "user", "content": [{"type": 5}]}]}, "messages.0.content.0.type"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"model": None}, "model"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"frequency_penalty": 2.1}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "ten"}, "max_completion_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"stop": ["a", 1]}, "stop.1"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": "x"}}, "stream_options.include_usage"),
        ({"n": 0}, "n"),
    ],
)
def test_invalid_chat_fields_name_their_param(fields, param):
    with pytest.raises(InvalidRequestError) as info:
        chat(**fields)
    assert info.value.status == 400
    assert info.value.param == param
    assert param in info.value.message


def test_missing_required_field():
    with pytest.raises(InvalidRequestError) as info:
        parse_request(ChatCompletionRequest, b'{"messages": [{"role": "user", "content": "x"}]}')
    assert (info.value.param, info.value.message) == ("model", "Missing required parameter: 'model'.")


@pytest.mark.parametrize("body", [b"{not json", b"", b"   ", b"[1, 2]", b'"text"'])
def test_bodies_that_are_not_a_json_object(body):
    with pytest.raises(InvalidRequestError) as info:
        parse_request(ChatCompletionRequest, body)
    assert info.value.param is None


def test_unknown_fields_and_nulls_are_accepted():
    request = chat(metadata={"a": "b"}, store=False, reasoning_effort="low", stop=None, seed=None, stream=None)
    assert request.model == "m" and request.stop is None


def test_request_values_win_over_model_defaults():
    defaults = SamplingDefaults(temperature=0.2, top_p=0.5, top_k=40, max_tokens=99, stop=["END"], seed=7)
    params = chat(temperature=0.9, stop="x", max_tokens=5).to_sampling_params(defaults)
    assert params == SamplingParams(max_tokens=5, temperature=0.9, top_p=0.5, top_k=40, seed=7, stop=("x",))


def test_builtin_defaults_without_config():
    assert chat().to_sampling_params() == SamplingParams(max_tokens=None)
    assert completion().to_sampling_params().max_tokens == 16  # OpenAI's legacy default
    assert completion().to_sampling_params(SamplingDefaults(max_tokens=64)).max_tokens == 64


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=5, max_completion_tokens=9).to_sampling_params().max_tokens == 9
    assert chat(max_tokens=5).to_sampling_params().max_tokens == 5


def test_stop_temperature_and_top_p_shapes():
    assert chat(stop=["a", "", "b"]).to_sampling_params().stop == ("a", "b")
    assert chat(temperature=0).to_sampling_params().temperature == 0.0
    greedy = chat(top_p=0, temperature=0.8).to_sampling_params()
    assert (greedy.temperature, greedy.top_p) == (0.0, 1.0)
    extensions = chat(top_k=5, repetition_penalty=1.1).to_sampling_params()
    assert (extensions.top_k, extensions.repetition_penalty) == (5, 1.1)


def test_prompt_joins_text_parts_and_maps_developer_role():
    request = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ]
    )
    messages = request.to_prompt(system="ignored: the request has one").messages
    assert messages[0] == {"role": "system", "content": "be brief"}
    assert messages[1] == {"role": "user", "content": "one\ntwo"}
    assert messages[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": {}}  # templates want an object
    assert messages[3] == {"role": "tool", "content": "42", "tool_call_id": "c1"}


def test_configured_system_prompt_is_prepended_when_none_is_sent():
    assert chat().to_prompt(system="You are terse.") == Prompt(
        messages=[{"role": "system", "content": "You are terse."}, *USER]
    )
    assert chat().to_prompt().messages == USER


def test_tools_reach_the_template_unless_tool_choice_is_none():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert chat(tools=tools).to_prompt().tools == tools
    assert chat(tools=tools, tool_choice="none").to_prompt().tools is None


def test_image_parts_are_kept_for_the_template():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    request = chat(messages=[*USER, {"role": "user", "content": [{"type": "text", "text": "see"}, image]}])
    assert request.image_parts() == [("messages.1.content.1.image_url", "data:image/png;base64,AAAA")]
    assert request.to_prompt().messages[1]["content"] == [{"type": "text", "text": "see"}, {"type": "image"}]


def test_unsupported_options_are_refused_not_ignored():
    with pytest.raises(NotSupportedError) as info:
        chat(functions=[{"name": "f"}])
    assert info.value.param == "functions"


def test_logprobs_bias_and_n_become_engine_parameters():
    params = chat(logprobs=True, top_logprobs=5, logit_bias={"7": -100, "3": 2.5}, n=3).to_sampling_params()
    assert (params.logprobs, params.logit_bias, params.prompt_logprobs) == (5, ((3, 2.5), (7, -100.0)), None)
    assert params.processes_logits
    assert chat(logprobs=True).to_sampling_params().logprobs == 0
    assert chat(logprobs=False, top_logprobs=0).to_sampling_params().logprobs is None
    assert not chat().to_sampling_params().processes_logits  # the fast path
    assert completion(logprobs=0).to_sampling_params().logprobs == 0
    assert completion(logprobs=3, echo=True, max_tokens=0).to_sampling_params().max_tokens == 0


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": -1, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"logit_bias": {"12": 100.5}}, "logit_bias"),
        ({"logit_bias": {"12": -101}}, "logit_bias"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"-3": 1}}, "logit_bias"),
        ({"logit_bias": {"3": "up"}}, "logit_bias.3"),
    ],
)
def test_logprobs_bias_and_n_out_of_range(fields, param):
    with pytest.raises(InvalidRequestError) as info:
        chat(**fields)
    assert info.value.param == param


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools.0.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools.0.function.parameters"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "sometimes", "tools": [WEATHER_TOOL]}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER_TOOL]}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
        ),
        ({"response_format": {"type": "json_object"}, "min_tokens": 5}, "min_tokens"),
        ({"messages": [*USER, {"role": "tool", "content": "42"}]}, "messages.1.tool_call_id"),
    ],
)
def test_bad_tools_and_formats_name_their_param(fields, param):
    with pytest.raises(InvalidRequestError) as info:
        chat(**fields)
    assert (info.value.status, info.value.param) == (400, param)


def test_tools_and_formats_the_engine_side_reads():
    named = {"type": "function", "function": {"name": "get_weather"}}
    request = chat(
        tools=[WEATHER_TOOL],
        tool_choice=named,
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
    )
    assert request.forces_calls and request.tool_dicts() == [WEATHER_TOOL]
    assert request.tool_choice_value() == named
    assert request.response_format.as_dict()["json_schema"] == {"name": "w", "schema": {"type": "object"}}
    assert completion(response_format={"type": "json_object"}).response_format.constrained


def test_accepted_no_op_options():
    chat(response_format={"type": "text"}, n=1, user="u1", logprobs=False, parallel_tool_calls=True)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("hi", [Prompt(text="hi")]),
        (["a", "b"], [Prompt(text="a"), Prompt(text="b")]),
        ([1, 2, 3], [Prompt(token_ids=[1, 2, 3])]),
        ([[1], [2, 3]], [Prompt(token_ids=[1]), Prompt(token_ids=[2, 3])]),
    ],
)
def test_completion_prompt_forms(prompt, expected):
    assert completion(prompt=prompt).to_prompts(fim_tokens=None) == expected


@pytest.mark.parametrize(
    ("prompt", "param"), [([], "prompt"), ([[1], []], "prompt.1"), ([1, -2], "prompt"), ({"a": 1}, "prompt")]
)
def test_invalid_completion_prompts(prompt, param):
    with pytest.raises(InvalidRequestError) as info:
        completion(prompt=prompt)
    assert info.value.param == param


def test_suffix_uses_fim_tokens_or_is_refused():
    fim = ("<PRE>", "<SUF>", "<MID>")
    assert completion(prompt="def f(", suffix="\n    return x").to_prompts(fim) == [
        Prompt(text="<PRE>def f(<SUF>\n    return x<MID>")
    ]
    with pytest.raises(InvalidRequestError) as info:
        completion(suffix="tail").to_prompts(fim_tokens=None)
    assert info.value.param == "suffix"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": 6}, "logprobs"),
        ({"best_of": 2, "n": 3}, "best_of"),
        ({"best_of": 21}, "best_of"),
        ({"best_of": 3, "stream": True}, "best_of"),  # as OpenAI: candidates cannot be streamed
        ({"max_tokens": 0}, "max_tokens"),  # 0 only with echo
        ({"max_tokens": -1, "echo": True}, "max_tokens"),
    ],
)
def test_completion_logprobs_and_best_of_out_of_range(fields, param):
    with pytest.raises(InvalidRequestError) as info:
        completion(**fields)
    assert info.value.param == param


def test_completion_candidates():
    assert (completion().choices_per_prompt, completion().candidates_per_prompt) == (1, 1)
    assert (completion(n=2).candidates_per_prompt, completion(n=2, best_of=5).candidates_per_prompt) == (2, 5)
    completion(best_of=1, stream=True)  # no ranking: streams


def test_stream_chunk_deltas_carry_only_what_changed():
    def dump(delta: DeltaMessage) -> dict:
        choice = ChatCompletionChunkChoice(index=0, delta=delta)
        chunk = ChatCompletionChunk(id="c", created=1, model="m", system_fingerprint="fp", choices=[choice])
        return chunk.model_dump()["choices"][0]["delta"]

    assert dump(DeltaMessage(role="assistant", content="")) == {"role": "assistant", "content": ""}
    assert dump(DeltaMessage(content="x")) == {"content": "x"}
    assert dump(DeltaMessage()) == {}


def test_include_usage_only_counts_when_streaming():
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=False, stream_options={"include_usage": True}).include_usage
