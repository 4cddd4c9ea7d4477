"""The reasoning splitter (server/chat/reasoning.py): markers found in templates, the split of a reply into
reasoning and answer whatever the token boundaries, a reply that starts inside the reasoning, and the
Ollama request's conversion (think, options, errors in Ollama's shape)."""

from __future__ import annotations

import pytest

from ortserve.server.chat.reasoning import (
    Answer,
    Reasoning,
    ReasoningMarkers,
    ReasoningStream,
    find_reasoning_markers,
    prompt_opens_reasoning,
    split_reasoning,
)
from ortserve.server.errors import InvalidRequestError, ModelNotFoundError, error_body, error_shape
from ortserve.server.protocol import ChatCompletionRequest, parse_request
from ortserve.server.protocol.ollama import OllamaChatRequest

THINK = ReasoningMarkers("<think>", "</think>", "enable_thinking")
REPLY = "<think>\nLet me see: 2 + 2.\n\nIt is 4.\n</think>\n\nThe answer is 4."


def _split_in_pieces(text: str, size: int, inside: bool = False) -> tuple[str, str]:
    stream = ReasoningStream(THINK, inside)
    pieces = []
    for i in range(0, len(text), size):
        pieces += stream.feed(text[i : i + size])
    pieces += stream.finish()
    reasoning = "".join(p.text for p in pieces if isinstance(p, Reasoning))
    answer = "".join(p.text for p in pieces if isinstance(p, Answer))
    return reasoning, answer


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_split_is_the_same_at_every_token_boundary(size):
    assert _split_in_pieces(REPLY, size) == ("Let me see: 2 + 2.\n\nIt is 4.", "The answer is 4.")


@pytest.mark.parametrize("size", [1, 4, 100])
def test_a_reply_that_starts_inside_the_reasoning(size):
    # the template wrote "<think>\n": the model continues the reasoning, then closes it
    assert _split_in_pieces("Hmm, 4.\n</think>\n\n4", size, inside=True) == ("Hmm, 4.", "4")


def test_a_reply_without_reasoning_is_all_answer():
    assert split_reasoning("Just 4. <think> is a tag", THINK) == (None, "Just 4. <think> is a tag")
    assert _split_in_pieces("<thin", 1) == ("", "<thin")  # a marker's beginning that never completes


def test_an_unclosed_reasoning_is_all_reasoning():
    assert split_reasoning("<think>still thinking", THINK) == ("still thinking", "")
    assert split_reasoning("still </thi", THINK, inside=True) == ("still </thi", "")


def test_streamed_reasoning_is_not_held_longer_than_a_marker():
    stream = ReasoningStream(THINK)
    assert stream.feed("<think>abc") == [Reasoning("abc")]
    assert stream.feed(" def</") == [Reasoning(" def")]  # "</" may begin the close marker
    assert stream.feed("think>Yes") == [Answer("Yes")]


def test_markers_come_from_the_template():
    qwen3 = "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{%- endif %}"
    assert find_reasoning_markers(qwen3) == THINK
    r1 = "{{'<｜Assistant｜><think>\\n'}} {% if '</think>' in content %}"
    assert find_reasoning_markers(r1) == ReasoningMarkers("<think>", "</think>", None)
    assert find_reasoning_markers("{{ messages }}") is None


def test_prompt_opens_reasoning():
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n", THINK)
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n", THINK)
    assert not prompt_opens_reasoning("<|im_start|>assistant\n", THINK)


def test_thinking_switch_from_v1_fields():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert parse_request(ChatCompletionRequest, {**body, "reasoning_effort": "none"}).template_vars(
        "enable_thinking"
    ) == (("enable_thinking", False),)
    kwargs = {**body, "chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "high"}
    assert parse_request(ChatCompletionRequest, kwargs).thinking() is False
    assert parse_request(ChatCompletionRequest, body).template_vars("enable_thinking") == ()
    with pytest.raises(InvalidRequestError) as info:
        parse_request(ChatCompletionRequest, {**body, "chat_template_kwargs": {"bad name": 1}})
    assert info.value.param == "chat_template_kwargs"


def test_ollama_chat_becomes_the_v1_request():
    request = parse_request(
        OllamaChatRequest,
        {
            "model": "m",
            "think": False,
            "format": "json",
            "options": {"temperature": 0, "num_predict": 5, "repeat_penalty": 1.1, "stop": "x", "num_gpu": 1},
            "messages": [
                {"role": "user", "content": "look", "images": ["aGVsbG8="]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                },
                {"role": "tool", "content": "1", "tool_name": "f"},
            ],
        },
    )
    body = request.to_openai()
    assert body["reasoning_effort"] == "none" and body["response_format"] == {"type": "json_object"}
    assert (body["temperature"], body["max_tokens"], body["repetition_penalty"], body["stop"]) == (0, 5, 1.1, ["x"])
    assert body["messages"][0]["content"][1] == {"type": "image_url", "image_url": "aGVsbG8="}
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    assert body["messages"][2]["tool_call_id"] == body["messages"][1]["tool_calls"][0]["id"]
    parse_request(ChatCompletionRequest, body)  # a valid /v1 request


def test_ollama_refuses_options_it_cannot_honour():
    with pytest.raises(InvalidRequestError) as info:
        parse_request(OllamaChatRequest, {"model": "m", "options": {"mirostat": 2}})
    assert info.value.param == "options.mirostat"


def test_errors_in_ollamas_shape_on_its_routes():
    assert error_shape("/api/chat") == "ollama" and error_shape("/v1/chat/completions") == "openai"
    assert error_body(ModelNotFoundError("x"), "ollama") == ({"error": "The model 'x' does not exist"}, 404)
    assert error_body(ModelNotFoundError("x"))[0]["error"]["code"] == "model_not_found"
