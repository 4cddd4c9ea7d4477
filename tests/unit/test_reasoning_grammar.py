"""A reasoning model's grammar (chat/reasoning_grammar.py): the reasoning first, the request's grammar after it,
and the form the runner picks for a rendered prompt. What the grammars do on a model: tests/integration/
test_reasoning_guidance.py."""

from __future__ import annotations

import pytest

from ortserve.server.chat.grammars import chat_guidance, response_format_guidance
from ortserve.server.chat.reasoning import ReasoningMarkers
from ortserve.server.chat.reasoning_grammar import reasoning_guidance, reasoning_limit
from ortserve.server.chat.tool_parsers import TOOL_PARSERS
from ortserve.server.engine.generation import Guidance

THINK = ReasoningMarkers("<think>", "</think>", "enable_thinking")
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]


def test_text_markers_end_a_lazy_terminal_and_the_answer_follows():
    answer = response_format_guidance(FORMAT)
    guidance = reasoning_guidance(answer, THINK, special={}, max_chars=500)
    assert (guidance.kind, guidance.param, guidance.parts) == ("lark_grammar", "response_format", answer.parts)
    fresh, opened = guidance.data.splitlines(), guidance.opened.data.splitlines()
    assert fresh[0] == 'start: ("<think>" reasoning BLANKS?)? reply'  # the reply may open its reasoning, or answer
    assert opened[0] == "start: reasoning BLANKS? reply"  # the prompt opened it: the reply starts inside
    assert 'REASONING: /(?s:.{0,500})/ "</think>"' in opened and "reasoning[lazy]: REASONING" in opened
    assert f"reply: %json {answer.data}" in opened and fresh[1:] == opened[1:]


def test_special_markers_are_token_ids_that_the_text_cannot_spell():
    guidance = reasoning_guidance(
        response_format_guidance(FORMAT), THINK, special={"<think>": 7, "</think>": 8}, max_chars=50
    )
    assert guidance.data.startswith("start: (<[7]> reasoning BLANKS?)? reply")
    assert "reasoning: REASONING <[8]>" in guidance.opened.data
    assert 'REASONING: /(?s:.{0,50})/ & ~(/(?s:.*)/ "</think>" /(?s:.*)/)' in guidance.opened.data


def test_a_tool_call_grammar_becomes_the_reply_rule():
    calls = chat_guidance(TOOL_PARSERS["hermes"], tools=TOOLS, tool_choice="required")
    guidance = reasoning_guidance(calls, THINK, special={}, max_chars=50)
    rules = [line.split(":")[0] for line in guidance.opened.data.splitlines()]
    assert rules.count("start") == 1 and "reply" in rules and "calls" in rules
    assert guidance.param == "tool_choice" and guidance.parts == calls.parts


def test_other_grammars_cannot_follow_reasoning():
    with pytest.raises(ValueError):
        reasoning_guidance(Guidance("regex", "a+", param="x"), THINK, special={}, max_chars=50)


@pytest.mark.parametrize(
    ("prompt", "inside"),
    [
        ("<|im_start|>assistant\n<think>\n", True),  # the template opened the block
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # ... and closed it (thinking off)
        ("<|im_start|>assistant\n", False),  # Qwen3's: the model opens it
        (None, False),
    ],
)
def test_the_runner_picks_the_form_for_the_rendered_prompt(prompt, inside):
    guidance = reasoning_guidance(response_format_guidance(FORMAT), THINK, special={}, max_chars=50)
    picked = guidance.for_prompt(prompt)
    assert picked.data == (guidance.opened.data if inside else guidance.data) and picked.opened is None
    plain = response_format_guidance(FORMAT)
    assert plain.for_prompt(prompt) is plain


def test_the_reasoning_limit_follows_max_tokens_else_the_context():
    assert reasoning_limit(200, 4096) == 200
    assert reasoning_limit(None, 4096) == 4096
