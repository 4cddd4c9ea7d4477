"""Tool-call formats by model family, chosen from the chat template (then the family), and their parser.

A format says how a model writes calls: the marker that opens them, what wraps
each call and what separates calls (all of it also used to build the grammar
that forces calls, see `grammars.py`), and what the call objects' keys are.
Formats register themselves with `@register_tool_parser`; `select_tool_parser`
picks one from the template's text first (the tiny test models are Llama-shaped
but speak Hermes), then from the model family recorded at conversion.

Every format writes each call as a JSON object `{"name": ..., "arguments": {...}}`
(Llama 3.x: "parameters"), so one incremental parser (`ToolCallStream`) reads
them all: text outside the calls is content; inside, the format's markers and
separators are glue; each top-level JSON object is one call. It streams the
call's name as soon as it is known, then the arguments text as it arrives, and
the non-streamed response is that same parser run over the whole text, so both
give the same calls.

A model whose template cannot render tools gets the documented generic format
(`GenericToolParser`): tools described in a system message, calls written as
`<tool_call>{"name": ..., "arguments": ...}</tool_call>`.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from typing import Any, ClassVar

TOOL_PARSERS: dict[str, type[ToolParser]] = {}


def register_tool_parser(name: str, *, families: tuple[str, ...] = (), template_markers: tuple[str, ...] = ()):
    """Class decorator: a format, found by `name`, by a marker in the chat template, or by model family."""

    def register(cls: type[ToolParser]) -> type[ToolParser]:
        if name in TOOL_PARSERS:
            raise ValueError(f"tool parser {name!r} is registered twice")
        cls.name, cls.families, cls.template_markers = name, families, template_markers
        TOOL_PARSERS[name] = cls
        return cls

    return register


class ToolParser:
    """A tool-call format. Pieces are tuples of strings; a piece that is a special token is kept whole."""

    name: ClassVar[str]
    families: ClassVar[tuple[str, ...]]
    template_markers: ClassVar[tuple[str, ...]]
    markers: ClassVar[tuple[str, ...]] = ()  # text that opens the calls in the model's output
    begin: ClassVar[tuple[str, ...]] = ()  # before the first call (grammar)
    call_open: ClassVar[tuple[str, ...]] = ()  # before each call
    call_close: ClassVar[tuple[str, ...]] = ()  # after each call
    separator: ClassVar[tuple[str, ...]] = ()  # between calls
    end: ClassVar[tuple[str, ...]] = ()  # after the last call
    arguments_key: ClassVar[str] = "arguments"
    bare_json: ClassVar[bool] = False  # a reply that starts with a JSON object is a call (no marker needed)
    extra_glue: ClassVar[tuple[str, ...]] = ()  # other spellings of the glue seen in the wild

    @classmethod
    def glue(cls) -> tuple[str, ...]:
        """The multi-character strings allowed between calls (longest first)."""
        pieces = {*cls.markers, *cls.begin, *cls.call_open, *cls.call_close, *cls.separator, *cls.end, *cls.extra_glue}
        return tuple(sorted((p.strip() for p in pieces if len(p.strip()) > 1), key=len, reverse=True))

    @classmethod
    def special_texts(cls) -> tuple[str, ...]:
        """Tokens the output must keep visible for this parser (they may be special tokens)."""
        return tuple(g for g in cls.glue() if g[:1] in "<[")

    @classmethod
    def new_call_id(cls) -> str:
        return "call_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))

    @classmethod
    def prepare(cls, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
        """Messages and tools as this model's template wants them (most need no change)."""
        return messages, tools


@register_tool_parser("mistral", families=("mistral",), template_markers=("[TOOL_CALLS]",))
class MistralToolParser(ToolParser):
    """Mistral (tokenizer v3): `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`."""

    markers = ("[TOOL_CALLS]",)
    begin = ("[TOOL_CALLS]", "[")
    separator = (", ",)
    end = ("]",)

    @classmethod
    def new_call_id(cls) -> str:  # Mistral's template insists on 9 alphanumeric characters
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))


@register_tool_parser("phi4", families=("phi",), template_markers=("<|tool_call|>", "<|tool|>"))
class Phi4ToolParser(ToolParser):
    """Phi-4-mini: `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`; tools go in the system message."""

    markers = ("<|tool_call|>",)
    begin = ("<|tool_call|>", "[")
    separator = (", ",)
    end = ("]", "<|/tool_call|>")
    extra_glue = ("</|tool_call|>",)

    @classmethod
    def prepare(cls, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
        if not tools:
            return messages, tools
        functions = json.dumps([tool["function"] for tool in tools], ensure_ascii=False)
        messages = [dict(m) for m in messages]
        if not messages or messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": "You are a helpful assistant with some tools."})
        messages[0]["tools"] = functions  # Phi-4-mini's template reads message['tools']
        return messages, tools


@register_tool_parser("hermes", families=("hermes",), template_markers=("<tool_call>",))
class HermesToolParser(ToolParser):
    """Hermes / Qwen2.5 / Qwen3: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` per call."""

    markers = ("<tool_call>",)
    call_open = ("<tool_call>", "\n")
    call_close = ("\n", "</tool_call>")
    separator = ("\n",)


@register_tool_parser(
    "llama3_json",
    families=("llama3",),
    template_markers=("<|python_tag|>", '"parameters": dictionary of argument name'),
)
class Llama3JsonToolParser(ToolParser):
    """Llama 3.1-3.3 JSON calls: the reply is `{"name": ..., "parameters": {...}}` (calls separated by "; ")."""

    markers = ("<|python_tag|>",)
    separator = ("; ",)
    arguments_key = "parameters"
    bare_json = True


@register_tool_parser("generic", families=("generic", "gemma"))
class GenericToolParser(HermesToolParser):
    """For templates that cannot render tools. Documented format:

    the tools are listed in a system message (appended to the first one, or a new
    one) with an instruction to reply with one block per call,
    `<tool_call>\\n{"name": "<function>", "arguments": {<arguments>}}\\n</tool_call>`;
    earlier calls in the history are written back in that form, and tool results
    become user messages `<tool_response>\\n...\\n</tool_response>`.
    """

    @classmethod
    def prepare(cls, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
        out: list[dict] = []
        for message in messages:
            if message["role"] == "assistant" and message.get("tool_calls"):
                calls = [_call_block(call) for call in message["tool_calls"]]
                text = "\n".join(([message["content"]] if message.get("content") else []) + calls)
                out.append({"role": "assistant", "content": text})
            elif message["role"] == "tool":
                block = f"<tool_response>\n{message['content']}\n</tool_response>"
                if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                    out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
                else:
                    out.append({"role": "user", "content": block, "_tool": True})
            else:
                out.append(dict(message))
        out = [{k: v for k, v in m.items() if k != "_tool"} for m in out]
        if tools:
            listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
            text = GENERIC_INSTRUCTIONS.format(tools=listing)
            if out and out[0]["role"] == "system":
                out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{text}"}
            else:
                out.insert(0, {"role": "system", "content": text})
        return out, None


GENERIC_INSTRUCTIONS = (
    "# Tools\nYou may call one or more of these functions:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, reply with one block per call, holding a JSON object with the function's name "
    'and arguments:\n<tool_call>\n{{"name": "<function name>", "arguments": {{<arguments>}}}}\n</tool_call>'
)


def _call_block(call: dict[str, Any]) -> str:
    function = call.get("function", call)
    arguments = function.get("arguments")
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'<tool_call>\n{{"name": {json.dumps(function["name"])}, "arguments": {text}}}\n</tool_call>'


_USES_TOOLS = re.compile(r"\btools\b")


def select_tool_parser(template: str | None, family: str | None = None) -> type[ToolParser]:
    """The format of a model: a marker in its chat template, else its family, else the generic format."""
    if not template or not _USES_TOOLS.search(template):
        return GenericToolParser  # the template cannot show tools to the model: we do
    for parser in TOOL_PARSERS.values():
        if any(marker in template for marker in parser.template_markers):
            return parser
    for parser in TOOL_PARSERS.values():
        if family in parser.families:
            return parser
    return GenericToolParser
