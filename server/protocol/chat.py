"""/v1/chat/completions: request, response and stream chunk models."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, model_serializer

from ortserve.server.engine.generation import Prompt
from ortserve.server.errors import InvalidRequestError, NotSupportedError
from ortserve.server.protocol.common import (
    NAME_PATTERN,
    FinishReason,
    MaxTokens,
    OpenAIModel,
    ResponseFormat,
    SamplingRequest,
    Usage,
)
from ortserve.server.protocol.logprobs import ChoiceLogprobs


class ImageURL(OpenAIModel):
    url: str  # http(s)://, data:image/...;base64,..., or bare base64
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the model's own processor sizes the image


class ContentPart(OpenAIModel):
    """One part of an array `content`: text (or refusal) parts, and image parts in user messages."""

    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: ImageURL | str | None = None  # a bare string: the URL itself (a common client shorthand)

    @property
    def image_source(self) -> str | None:
        return self.image_url.url if isinstance(self.image_url, ImageURL) else self.image_url


class FunctionCall(OpenAIModel):
    name: str
    arguments: str


class ToolCall(OpenAIModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(OpenAIModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of an object; omitted: no parameters
    strict: bool | None = None  # accepted; with forced calls the arguments always follow the schema


class Tool(OpenAIModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: NamedFunction


_MEDIA = {"input_audio": "audio", "file": "files"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _text_of(content: str | list[ContentPart] | None, param: str) -> str | None:
    """A message's content as one string: text parts joined with newlines."""
    if content is None or isinstance(content, str):
        return content
    return "\n".join(_part_text(part, f"{param}.{i}") for i, part in enumerate(content))


def _part_text(part: ContentPart, param: str) -> str:
    if part.type in _MEDIA:
        raise InvalidRequestError(f"This model does not accept {_MEDIA[part.type]}.", param=param)
    if part.type == "text" and part.text is not None:
        return part.text
    if part.type == "refusal" and part.refusal is not None:
        return part.refusal
    if part.type == "input_image":
        raise InvalidRequestError(
            "Invalid content part of type 'input_image' (the Responses API's): chat messages take images as "
            "{'type': 'image_url', 'image_url': {'url': ...}}.",
            param=param,
        )
    raise InvalidRequestError(f"Invalid content part of type '{part.type}': expected a text part.", param=param)


def _has_images(content: list[ContentPart]) -> bool:
    return any(part.type == "image_url" for part in content)


def _parts_of(content: list[ContentPart], param: str) -> list[dict[str, str]]:
    """Content with images in Hugging Face's chat-template shape: {"type": "text", "text"} / {"type": "image"}."""
    return [
        {"type": "image"} if part.type == "image_url" else {"type": "text", "text": _part_text(part, f"{param}.{i}")}
        for i, part in enumerate(content)
    ]


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: MaxTokens = None
    max_completion_tokens: MaxTokens = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    # reasoning models: "none" turns the reasoning off where the template can (Qwen3's enable_thinking), any
    # other effort leaves it on; vLLM's chat_template_kwargs are set as the template's variables
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def check(self) -> None:
        super().check()
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError(
                "Invalid value for 'top_logprobs': it requires 'logprobs' to be true.", param="top_logprobs"
            )
        for i, message in enumerate(self.messages):
            if message.role in ("user", "system", "developer", "tool") and message.content is None:
                raise InvalidRequestError(
                    f"Invalid value for 'messages.{i}.content': a {message.role} message needs content.",
                    param=f"messages.{i}.content",
                )
            self._check_content(message, f"messages.{i}.content")
        if self.response_format is not None:
            self.response_format.check()
        self._check_tools()
        if self.min_tokens and (self.forces_calls or (self.response_format and self.response_format.constrained)):
            raise InvalidRequestError(
                "min_tokens cannot be combined with a JSON response_format or a forced tool_choice.",
                param="min_tokens",
            )
        if self.functions or self.function_call is not None:
            raise NotSupportedError("functions are deprecated and not supported; use tools.", param="functions")
        for key in self.chat_template_kwargs or {}:
            if not _IDENTIFIER.fullmatch(key):
                raise InvalidRequestError(
                    f"Invalid key in 'chat_template_kwargs': '{key}' is not a template variable name.",
                    param="chat_template_kwargs",
                )

    def thinking(self) -> bool | None:
        """Whether a reasoning model should reason: chat_template_kwargs.enable_thinking, else reasoning_effort
        ("none": off); None: the template's default."""
        enable = (self.chat_template_kwargs or {}).get("enable_thinking")
        if isinstance(enable, bool):
            return enable
        return None if self.reasoning_effort is None else self.reasoning_effort != "none"

    def template_vars(self, switch: str | None) -> tuple[tuple[str, object], ...]:
        """Variables set for the chat template: chat_template_kwargs, and the thinking switch it reads."""
        variables = dict(self.chat_template_kwargs or {})
        thinking = self.thinking()
        if switch and thinking is not None:
            variables[switch] = thinking
        return tuple(variables.items())

    @staticmethod
    def _check_content(message: ChatMessage, param: str) -> None:
        if not isinstance(message.content, list):
            return
        for j, part in enumerate(message.content):
            if part.type != "image_url":
                _part_text(part, f"{param}.{j}")
            elif message.role != "user":  # as OpenAI: images are user content
                raise InvalidRequestError(
                    f"Invalid content part in '{param}.{j}': image_url parts are only accepted in user messages.",
                    param=f"{param}.{j}",
                )
            elif not part.image_source:
                raise InvalidRequestError(
                    f"Missing required parameter: '{param}.{j}.image_url.url'.", param=f"{param}.{j}.image_url"
                )

    def image_parts(self) -> list[tuple[str, str]]:
        """(param, URL or base64) of every image part, in order: "messages.0.content.1.image_url"."""
        return [
            (f"messages.{i}.content.{j}.image_url", part.image_source or "")
            for i, message in enumerate(self.messages)
            for j, part in enumerate(message.content if isinstance(message.content, list) else ())
            if part.type == "image_url"
        ]

    def _check_tools(self) -> None:
        for i, message in enumerate(self.messages):
            if message.role == "tool" and not message.tool_call_id:
                raise InvalidRequestError(
                    f"Missing required parameter: 'messages.{i}.tool_call_id'.", param=f"messages.{i}.tool_call_id"
                )
        names: set[str] = set()
        for i, tool in enumerate(self.tools or []):
            function = tool.function
            if function.name in names:
                raise InvalidRequestError(f"Duplicate function name '{function.name}' in tools.", param="tools")
            names.add(function.name)
            kind = (function.parameters or {}).get("type", "object")
            if kind != "object":
                raise InvalidRequestError(
                    f"Invalid schema for function '{function.name}': schema must be a JSON Schema of "
                    f"'type: \"object\"', got 'type: {json.dumps(kind)}'.",
                    param=f"tools.{i}.function.parameters",
                )
        choice = self.tool_choice
        if self.forces_calls and not self.tools:
            raise InvalidRequestError(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                param="tool_choice",
            )
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice': no function named '{choice.function.name}' in 'tools'.",
                param="tool_choice",
            )

    @property
    def forces_calls(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)

    @property
    def uses_tools(self) -> bool:
        """Tools are offered to the model (and its reply is read for calls)."""
        return bool(self.tools) and self.tool_choice != "none"

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        if not self.uses_tools:
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools or ()]

    def tool_choice_value(self) -> str | dict[str, Any] | None:
        choice = self.tool_choice
        return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice

    def to_prompt(self, system: str | None = None, images: tuple[bytes, ...] = ()) -> Prompt:
        """The messages as template input; `system` (the model's configured one) is used when none is sent.

        A message with image parts keeps its parts (`{"type": "image"}` where each image goes, the
        template's convention), and `images` (one per image part, in order) go with the prompt; every
        other message's content is one string, as for a text-only request.
        """
        messages: list[dict[str, Any]] = []
        for i, message in enumerate(self.messages):
            param = f"messages.{i}.content"
            content: str | list[dict[str, str]] | None
            if isinstance(message.content, list) and _has_images(message.content):
                content = _parts_of(message.content, param)
            else:
                content = _text_of(message.content, param)
            out: dict[str, Any] = {
                # "developer" is OpenAI's newer name for the system role; templates know "system".
                "role": "system" if message.role == "developer" else message.role,
                # templates concatenate content: only an assistant turn that calls tools keeps None
                "content": "" if content is None and not message.tool_calls else content,
            }
            if message.name is not None:
                out["name"] = message.name
            if message.tool_calls:
                out["tool_calls"] = [_template_call(call) for call in message.tool_calls]
            if message.tool_call_id is not None:
                out["tool_call_id"] = message.tool_call_id
            messages.append(out)
        if system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
        return Prompt(messages=messages, tools=self.tool_dicts(), images=images)


def _template_call(call: ToolCall) -> dict[str, Any]:
    """A tool call as chat templates expect it: arguments as an object (Hugging Face's convention)."""
    out = call.model_dump()
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError:
        return out
    if isinstance(arguments, dict):
        out["function"]["arguments"] = arguments
    return out


# ---- responses -------------------------------------------------------------
def _without_none(handler: Any, value: Any) -> dict[str, Any]:
    return {k: v for k, v in handler(value).items() if v is not None}


class Function(BaseModel):
    name: str
    arguments: str  # JSON text


class ChatCompletionMessageToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: Function


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    reasoning_content: str | None = None  # a reasoning model's reasoning (vLLM's and DeepSeek's field)

    @model_serializer(mode="wrap")
    def _drop_absent_calls(self, handler: Any) -> dict[str, Any]:
        body = handler(self)
        for key in ("tool_calls", "reasoning_content"):
            if body.get(key) is None:
                body.pop(key, None)
        return body


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class ChoiceDeltaToolCallFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler, self)


class ChoiceDeltaToolCall(BaseModel):
    """A call's first delta has its id, type and name (arguments ""); later ones only argument fragments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaToolCallFunction

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler, self)


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        # A delta carries only what changed: {"role": ..., "content": ""}, {"content": ...}, then {}.
        return _without_none(handler, self)


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None
