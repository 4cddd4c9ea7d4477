"""Grammars for JSON mode, JSON schemas and tool calls (pure: request pieces in, `Guidance` out).

llguidance (inside onnxruntime-genai) enforces them token by token. Measured on
the tiny random-weight models: with a plain JSON schema a weak model may write
whitespace until it runs out of tokens, so every schema gets
`"x-guidance": {"whitespace_flexible": false, ...}`: compact JSON with the usual
", " and ": " separators, then the end of sequence. A schema that sets its own
"x-guidance" keeps it.

Forced tool calls (tool_choice "required" or a named function) are a Lark grammar
in the model's own format (see `tool_parsers.py`): the markers, then for each call
the literal `{"name": "<function>", "arguments": ` followed by `%json` of that
function's parameters schema. A marker that is a special token is written `<[id]>`
so the model emits that token, not its spelling.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ortserve.server.chat.schema_limits import check_schema
from ortserve.server.chat.tool_parsers import ToolParser
from ortserve.server.engine.generation import Guidance, GuidancePart

JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}  # OpenAI: omitted = none


def schema_text(schema: Mapping[str, Any]) -> str:
    """A JSON schema for llguidance: ours x-guidance defaults under the schema's own."""
    style = {**JSON_STYLE, **(schema.get("x-guidance") or {})}
    return json.dumps({**schema, "x-guidance": style}, ensure_ascii=False)


def response_format_guidance(response_format: Mapping[str, Any] | None) -> Guidance | None:
    """`{"type": "json_object"}`: any JSON object; `{"type": "json_schema", ...}`: that schema; else None."""
    kind = (response_format or {}).get("type", "text")
    if kind == "json_object":
        return Guidance("json_schema", schema_text({"type": "object"}), param="response_format")
    if kind == "json_schema":
        spec = (response_format or {}).get("json_schema") or {}
        check_schema(spec.get("schema") or {}, "response_format.json_schema.schema")
        text = schema_text(spec.get("schema") or {})
        part = GuidancePart(
            "response_format.json_schema.schema", "json_schema", text, f"response_format '{spec.get('name', '')}'"
        )
        return Guidance("json_schema", text, param="response_format", parts=(part,))
    return None


def chat_guidance(
    parser: type[ToolParser],
    *,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    parallel_tool_calls: bool = True,
    response_format: Mapping[str, Any] | None = None,
    special_tokens: Mapping[str, int] | None = None,
) -> Guidance | None:
    """The grammar a chat request needs, or None when the model may write freely.

    tool_choice "required": at least one call (exactly one without parallel calls);
    a named function: exactly one call of it; "auto" (the default with tools): free,
    unless a JSON response_format is set, then "calls or that JSON"; "none": as without tools.
    """
    json_format = response_format_guidance(response_format)
    choice = tool_choice or ("auto" if tools else "none")
    if not tools or choice == "none":
        return json_format
    if choice == "auto":
        if json_format is None:
            return None
        return _calls_grammar(
            parser,
            tools,
            range(len(tools)),
            multiple=parallel_tool_calls,
            special=special_tokens or {},
            alternative=json_format,
            param="response_format",
        )
    if choice == "required":
        indices: range | list[int] = range(len(tools))
        multiple, param = parallel_tool_calls, "tool_choice"
    else:
        name = choice["function"]["name"] if isinstance(choice, Mapping) else choice
        indices = [i for i, tool in enumerate(tools) if tool["function"]["name"] == name]
        multiple, param = False, "tool_choice"
    return _calls_grammar(parser, tools, indices, multiple=multiple, special=special_tokens or {}, param=param)


def parameters_schema(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    parameters = tool["function"].get("parameters")
    return NO_PARAMETERS if not parameters else parameters


def _calls_grammar(
    parser: type[ToolParser],
    tools: Sequence[Mapping[str, Any]],
    indices: range | list[int],
    *,
    multiple: bool,
    special: Mapping[str, int],
    param: str,
    alternative: Guidance | None = None,
) -> Guidance:
    def seq(pieces: tuple[str, ...]) -> str:
        return " ".join(f"<[{special[p]}]>" if p in special else _literal(p) for p in pieces)

    def rule(name: str, *body: str) -> str:
        return f"{name}: " + " ".join(part for part in body if part)

    rows = [
        rule("start", "calls" if alternative is None else "calls | answer"),
        rule("calls", seq(parser.begin), "call (separator call)*" if multiple else "call", seq(parser.end)),
        rule("call", " | ".join(f"call_{i}" for i in indices)),
        rule("separator", seq(parser.separator) or _literal("")),
    ]
    parts = []
    for i in indices:
        function = tools[i]["function"]
        head = _literal(f'{{"name": {json.dumps(function["name"])}, "{parser.arguments_key}": ')
        rows.append(rule(f"call_{i}", seq(parser.call_open), head, f"args_{i}", _literal("}"), seq(parser.call_close)))
        check_schema(parameters_schema(tools[i]), f"tools.{i}.function.parameters")
        text = schema_text(parameters_schema(tools[i]))
        rows.append(rule(f"args_{i}", f"%json {text}"))
        label = f"function '{function['name']}'"
        parts.append(GuidancePart(f"tools.{i}.function.parameters", "json_schema", text, label))
    if alternative is not None:
        rows.append(rule("answer", f"%json {alternative.data}"))
        parts.extend(alternative.parts)
    return Guidance("lark_grammar", "\n".join(rows) + "\n", param=param, parts=tuple(parts))


def _literal(text: str) -> str:
    """A Lark string literal."""
    return json.dumps(text, ensure_ascii=False)
