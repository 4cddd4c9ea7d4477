"""/v1/responses: the request (OpenAI's Responses API) and its input items, and their conversion into a chat
request, so that a response is planned and generated exactly as a chat completion is.

The request refuses fields it does not know (a 400 naming the field), and fields OpenAI has whose features this
server lacks (background runs, file inputs, hosted tools, ...) with a 400 that names them (code not_supported),
never a reply silently different from what was asked. The response objects and stream events are in `response_objects`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from ortserve.server.errors import InvalidRequestError
from ortserve.server.protocol.common import (
    NAME_PATTERN,
    KeepAlive,
    MaxTokens,
    ModelName,
    OpenAIModel,
    Seed,
    Temperature,
    TopP,
)

Status = Literal["in_progress", "completed", "incomplete"]


class InputContent(OpenAIModel):
    """One part of an input message's content: input_text, input_image (a data: or http(s) URL), output_text
    (an earlier assistant turn given back), refusal."""

    type: str
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None
    refusal: str | None = None


class InputItem(OpenAIModel):
    """One input item: a message (`type` "message" or left out), a `function_call` the model made earlier, a
    `function_call_output` (a tool's result), or a `reasoning` item given back (skipped: templates drop old
    reasoning). Output items given back as they came (with their ids and statuses) are accepted."""

    type: str = "message"
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[InputContent] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContent] | None = None
    id: str | None = None
    status: Status | None = None


class FunctionTool(OpenAIModel):
    """A function tool in the Responses API's flat shape."""

    type: str
    name: str | None = Field(None, pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(OpenAIModel):
    type: str
    name: str | None = None


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=NAME_PATTERN)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(OpenAIModel):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only one a model without that training follows


class ReasoningConfig(OpenAIModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # the older name of summary


class ResponseStreamOptions(OpenAIModel):
    include_obfuscation: bool | None = None  # accepted: the events carry no padding either way


class ResponsesRequest(OpenAIModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: ModelName
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: MaxTokens = None
    temperature: Temperature = None
    top_p: TopP = None
    stream: bool | None = False
    stream_options: ResponseStreamOptions | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningConfig | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # accepted: the prompt cache reuses any shared prefix by itself
    service_tier: Literal["auto", "default"] | None = None
    truncation: Literal["disabled"] | None = None  # "auto" would drop turns silently
    include: list[str] | None = Field(None, max_length=0)  # nothing extra can be included yet
    background: Literal[False] | None = None
    top_logprobs: Literal[0] | None = None
    # extensions (as on /v1/chat/completions)
    seed: Seed = None
    keep_alive: KeepAlive = None

    def check(self) -> None:
        for i, item in enumerate(self.input if isinstance(self.input, list) else ()):
            _check_item(item, f"input.{i}")
        for i, tool in enumerate(self.tools or ()):
            if tool.type != "function":
                raise _not_supported(
                    f"Tools of type '{tool.type}' are not supported; only function tools are.", param=f"tools.{i}.type"
                )
            if tool.name is None:
                raise InvalidRequestError(f"Missing required parameter: 'tools.{i}.name'.", param=f"tools.{i}.name")
        choice = self.tool_choice
        if isinstance(choice, ToolChoiceFunction):
            if choice.type != "function":
                raise _not_supported(
                    f"tool_choice of type '{choice.type}' is not supported; use 'none', 'auto', 'required' or "
                    "{'type': 'function', 'name': ...}.",
                    param="tool_choice.type",
                )
            if choice.name is None:
                raise InvalidRequestError("Missing required parameter: 'tool_choice.name'.", param="tool_choice.name")
        text_format = self.text.format if self.text else None
        if text_format is not None and text_format.type == "json_schema":
            for field in ("name", "schema_"):
                if getattr(text_format, field) is None:
                    name = field.rstrip("_")
                    raise InvalidRequestError(
                        f"Missing required parameter: 'text.format.{name}'.", param=f"text.format.{name}"
                    )

    @property
    def summary(self) -> str | None:
        """The reasoning summary asked for (the reasoning itself is the summary: there is no summarizer)."""
        if self.reasoning is None:
            return None
        return self.reasoning.summary or self.reasoning.generate_summary

    def input_messages(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The input as chat messages (the shape /v1/chat/completions takes), and where each came from
        ("input", "input.3"), to name the part of the request that an error is about."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}], ["input"]
        messages: list[dict[str, Any]] = []
        origins: list[str] = []
        for i, item in enumerate(self.input):
            param = f"input.{i}"
            if item.type == "message":
                messages.append({"role": item.role, "content": _chat_content(item.content)})
                origins.append(param)
            elif item.type == "function_call":
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                    origins.append(param)
            elif item.type == "function_call_output":
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _chat_content(item.output)})
                origins.append(param)
        return messages, origins

    def chat_fields(self) -> dict[str, Any]:
        """Every field of the chat request but its messages (the Responses names mapped to chat's)."""
        fields: dict[str, Any] = {
            "model": self.model,
            "stream": bool(self.stream),
            "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "keep_alive": self.keep_alive,
            "user": self.user,
            "parallel_tool_calls": self.parallel_tool_calls,
        }
        if self.tools:
            fields["tools"] = [
                {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                for tool in self.tools
            ]
        choice = self.tool_choice
        if isinstance(choice, ToolChoiceFunction):
            fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            fields["tool_choice"] = choice
        text_format = self.text.format if self.text else None
        if text_format is not None and text_format.type == "json_schema":
            schema = text_format.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)
            fields["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif text_format is not None:
            fields["response_format"] = {"type": text_format.type}
        if self.reasoning and self.reasoning.effort:
            fields["reasoning_effort"] = "high" if self.reasoning.effort == "xhigh" else self.reasoning.effort
        return {k: v for k, v in fields.items() if v is not None}


def _not_supported(message: str, param: str) -> InvalidRequestError:
    """A valid OpenAI request asking for what this server lacks (hosted tools, files): a 400 with code
    not_supported naming the field (a client's mistake to fix, never a server error)."""
    return InvalidRequestError(message, param=param, code="not_supported")


_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
_PART_TYPES = {"input_text": "text", "output_text": "text", "refusal": "refusal", "input_image": "image_url"}


def _check_item(item: InputItem, param: str) -> None:
    if item.type not in _ITEM_TYPES:
        raise _not_supported(
            f"Input items of type '{item.type}' are not supported; supported: {', '.join(_ITEM_TYPES)}.",
            param=f"{param}.type",
        )
    if item.type == "message":
        if item.role is None:
            raise InvalidRequestError(f"Missing required parameter: '{param}.role'.", param=f"{param}.role")
        if item.content is None:
            raise InvalidRequestError(f"Missing required parameter: '{param}.content'.", param=f"{param}.content")
        _check_parts(item.content, f"{param}.content", images=item.role == "user")
    elif item.type == "function_call":
        for field in ("call_id", "name", "arguments"):
            if getattr(item, field) is None:
                raise InvalidRequestError(f"Missing required parameter: '{param}.{field}'.", param=f"{param}.{field}")
    elif item.type == "function_call_output":
        for field in ("call_id", "output"):
            if getattr(item, field) is None:
                raise InvalidRequestError(f"Missing required parameter: '{param}.{field}'.", param=f"{param}.{field}")
        _check_parts(item.output, f"{param}.output", images=False)


def _check_parts(content: str | list[InputContent] | None, param: str, images: bool) -> None:
    for j, part in enumerate(content if isinstance(content, list) else ()):
        where = f"{param}.{j}"
        if part.type not in _PART_TYPES:
            raise _not_supported(
                f"Content parts of type '{part.type}' are not supported; supported: {', '.join(_PART_TYPES)}.",
                param=f"{where}.type",
            )
        if part.type == "input_image":
            if not images:
                raise InvalidRequestError(
                    f"Invalid content part in '{where}': input_image parts are only accepted in user messages.",
                    param=where,
                )
            if part.file_id is not None:
                raise _not_supported("Images by file_id are not supported; send image_url.", param=f"{where}.file_id")
            if not part.image_url:
                raise InvalidRequestError(
                    f"Missing required parameter: '{where}.image_url'.", param=f"{where}.image_url"
                )
        elif getattr(part, _PART_TYPES[part.type]) is None:
            field = _PART_TYPES[part.type]
            raise InvalidRequestError(f"Missing required parameter: '{where}.{field}'.", param=f"{where}.{field}")


def _chat_content(content: str | list[InputContent] | None) -> str | list[dict[str, Any]]:
    """Input content as chat content: a string stays one; parts become chat's text and image_url parts."""
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[dict[str, Any]] = []
    for part in content:
        if part.type == "input_image":
            url: dict[str, Any] = {"url": part.image_url}
            if part.detail in ("auto", "low", "high"):
                url["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": url})
        elif part.type == "refusal":
            parts.append({"type": "refusal", "refusal": part.refusal})
        else:
            parts.append({"type": "text", "text": part.text})
    return parts
