"""A reasoning model's grammar: its reasoning free, the request's grammar (a JSON schema, tool calls) on the answer.

`reasoning_guidance(answer, markers, ...)` wraps the grammar a request needs (`grammars.py`) in an llguidance
Lark grammar: first the reasoning, free text up to and including the close marker (`</think>`), then blanks,
then `answer`'s grammar. Two forms, chosen in the runner once the prompt is rendered (`Guidance.for_prompt`):
when the template opened the block itself (DeepSeek-R1's, Qwen3-Thinking's) the reply starts inside the
reasoning; otherwise it may start with the open marker (or skip the reasoning and answer at once).

The reasoning never holds the close marker except at its end (so the splitter in `reasoning.py` cuts exactly
where the grammar does): a close marker that is text (Qwen3's `</think>` is an added token, not a special one)
ends a lazy terminal, `/(?s:.{0,N})/ "</think>"` matched as short as possible; a special-token marker is
written `<[id]>` after a terminal that cannot spell the marker as text.

Length: a model that never closes its reasoning would never reach the answer (random weights do not close
it), so the reasoning may write at most `REASONING_CHARS_PER_TOKEN` characters per token of `max_tokens` (of
the served context without it), then only the close marker may follow. Characters, not tokens: llguidance
counts a terminal's tokens too (`max_tokens=`), but cuts the terminal there without its marker. One character
per token is about a quarter of the tokens of English reasoning (a random-weight model's tokens are shorter:
about half), so the answer keeps most of the budget; real models close their reasoning themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ortserve.server.chat.reasoning import ReasoningMarkers
from ortserve.server.engine.generation import Guidance, OpenedReasoning

REASONING_CHARS_PER_TOKEN = 1
ANY = "/(?s:.*)/"


def reasoning_limit(max_tokens: int | None, context_length: int) -> int:
    """The most characters of reasoning a reply may write before its answer."""
    return REASONING_CHARS_PER_TOKEN * (max_tokens or context_length)


def reasoning_guidance(
    answer: Guidance, markers: ReasoningMarkers, *, special: Mapping[str, int], max_chars: int
) -> Guidance:
    """`answer` after the reasoning (the `opened` form: the prompt opened the block, the reply starts inside)."""
    reply = _reply_rules(answer)
    opening = f"<[{special[markers.open]}]>" if markers.open in special else _literal(markers.open)
    rules = [*_reasoning_rules(markers, special, max_chars), "BLANKS: /[ \\t\\r\\n]{1,8}/", *reply]
    fresh = "\n".join([f"start: ({opening} reasoning BLANKS?)? reply", *rules]) + "\n"
    opened = "\n".join(["start: reasoning BLANKS? reply", *rules]) + "\n"
    return Guidance(
        "lark_grammar", fresh, param=answer.param, parts=answer.parts, opened=OpenedReasoning(markers, opened)
    )


def _reasoning_rules(markers: ReasoningMarkers, special: Mapping[str, int], max_chars: int) -> list[str]:
    text = f"/(?s:.{{0,{max_chars}}})/"
    close = markers.close
    if close in special:  # a special token: the text may not spell it, the token ends the reasoning
        return [f"reasoning: REASONING <[{special[close]}]>", f"REASONING: {text} & ~({ANY} {_literal(close)} {ANY})"]
    return ["reasoning[lazy]: REASONING", f"REASONING: {text} {_literal(close)}"]  # ends at the first marker


def _reply_rules(answer: Guidance) -> list[str]:
    """`answer` as Lark rules whose top rule is `reply`."""
    if answer.kind == "json_schema":
        return [f"reply: %json {answer.data}"]
    if answer.kind == "lark_grammar" and answer.data.startswith("start:"):  # ours (grammars.py): start comes first
        return ["reply:" + answer.data.removeprefix("start:").rstrip("\n")]
    raise ValueError(f"a {answer.kind} grammar cannot follow reasoning")


def _literal(text: str) -> str:
    """A Lark string literal."""
    return json.dumps(text, ensure_ascii=False)
