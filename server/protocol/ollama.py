"""Ollama's native chat API (POST /api/chat, /api/generate): requests, their `options`, and their conversion
into the /v1 request models, so that both APIs make the same engine calls.

Pure data: pydantic only. Fields are Ollama's (its API documentation and `api/types.go`); `options` keys
we cannot honour are refused with a 400 naming them (`UNSUPPORTED_PARAMETERS`), llama.cpp's hardware
tuning is accepted and ignored (`IGNORED_PARAMETERS`), and unknown keys are ignored, as Ollama does.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ortserve.core.model_config import IGNORED_PARAMETERS, UNSUPPORTED_PARAMETERS
from ortserve.server.errors import InvalidRequestError
from ortserve.server.protocol.chat import Tool
from ortserve.server.protocol.common import KeepAlive, ModelName, OpenAIModel

log = logging.getLogger(__name__)

Think = bool | Literal["low", "medium", "high"] | None
Format = Literal["", "json"] | dict[str, Any] | None


class Options(OpenAIModel):
    """Ollama's per-request `options` (the Modelfile's PARAMETERs)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    num_predict: int | None = None
    stop: list[str] | str | None = None
    num_ctx: int | None = Field(None, ge=1)
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def check(self) -> None:
        for key, value in (self.model_extra or {}).items():
            if key in UNSUPPORTED_PARAMETERS and value is not None:
                raise InvalidRequestError(
                    f"The option '{key}' is not supported by ortserve (it changes sampling in a way ONNX Runtime "
                    "GenAI cannot reproduce); leave it out.",
                    param=f"options.{key}",
                )
            if key not in IGNORED_PARAMETERS:
                log.warning("ignoring the unknown option %r (as Ollama does)", key)

    def sampling_fields(self) -> dict[str, Any]:
        """The options as /v1 request fields."""
        fields: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "repetition_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        if self.num_predict is not None and self.num_predict >= 0:  # -1 (no limit), -2 (fill the context)
            if self.num_predict == 0:
                raise InvalidRequestError(
                    "Invalid value for 'options.num_predict': 0 generates nothing; use -1 for no limit.",
                    param="options.num_predict",
                )
            fields["max_tokens"] = self.num_predict
        return {k: v for k, v in fields.items() if v is not None}


class OllamaFunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int | None = None


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    function: OllamaFunctionCall


class OllamaMessage(OpenAIModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None  # base64
    tool_calls: list[OllamaToolCall] | None = None
    thinking: str | None = None  # an earlier reply's reasoning: not sent back to the model (as templates drop it)
    tool_name: str | None = None


class OllamaRequest(OpenAIModel):
    """What /api/chat and /api/generate share."""

    model: ModelName
    format: Format = None
    options: Options | None = None
    stream: bool | None = True
    keep_alive: KeepAlive = None
    think: Think = None

    def check(self) -> None:
        if self.options is not None:
            self.options.check()

    def common_fields(self) -> dict[str, Any]:
        """The /v1 fields for format, options and think."""
        fields: dict[str, Any] = {"model": self.model, "keep_alive": self.keep_alive}
        if self.format == "json":
            fields["response_format"] = {"type": "json_object"}
        elif isinstance(self.format, dict):
            fields["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "format", "schema": self.format},
            }
        if self.options is not None:
            fields.update(self.options.sampling_fields())
        if self.think is not None:
            fields["reasoning_effort"] = (
                ("medium" if self.think else "none") if isinstance(self.think, bool) else self.think
            )
        return {k: v for k, v in fields.items() if v is not None}

    @property
    def num_ctx(self) -> int | None:
        return self.options.num_ctx if self.options else None


class OllamaChatRequest(OllamaRequest):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[Tool] | None = None

    def to_openai(self) -> dict[str, Any]:
        """The /v1/chat/completions body for this request (tool calls get ids; tool results answer them)."""
        messages: list[dict[str, Any]] = []
        pending: list[tuple[str, str]] = []  # (id, name) of calls not answered yet
        for i, message in enumerate(self.messages):
            out: dict[str, Any] = {"role": message.role, "content": message.content}
            if message.images:
                if message.role != "user":
                    raise InvalidRequestError(
                        "Invalid value for 'messages.{i}.images': images are accepted in user messages.",
                        param=f"messages.{i}.images",
                    )
                parts = [{"type": "text", "text": message.content}] if message.content else []
                out["content"] = parts + [{"type": "image_url", "image_url": image} for image in message.images]
            if message.tool_calls:
                calls: list[dict[str, Any]] = [
                    {
                        "id": f"call_{i}_{j}",
                        "type": "function",
                        "function": {"name": c.function.name, "arguments": json.dumps(c.function.arguments)},
                    }
                    for j, c in enumerate(message.tool_calls)
                ]
                out["tool_calls"] = calls
                pending = [(c["id"], c["function"]["name"]) for c in calls]
            if message.role == "tool":
                match = next((p for p in pending if p[1] == message.tool_name), pending[0] if pending else None)
                if match is not None:
                    pending.remove(match)
                out["tool_call_id"] = match[0] if match else f"call_{i}"
            messages.append(out)
        body = {**self.common_fields(), "messages": messages}
        if self.tools:
            body["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
        return body


class OllamaGenerateRequest(OllamaRequest):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None
    raw: bool | None = False

    def check(self) -> None:
        super().check()
        if self.template:
            raise InvalidRequestError(
                "'template' is not supported: ortserve renders prompts with the model's own chat template "
                "(use raw: true to send a prompt as it is).",
                param="template",
            )
        if self.context:
            raise InvalidRequestError(
                "'context' (token ids of an earlier reply) is not supported; send the conversation to /api/chat.",
                param="context",
            )
        if self.raw and self.images:
            raise InvalidRequestError("Images need the chat template: they cannot be sent with raw: true.", param="raw")

    @property
    def loads_only(self) -> bool:
        """An empty prompt only loads (or with keep_alive 0 unloads) the model, as Ollama."""
        return not self.prompt and not self.suffix and not self.images

    @property
    def completes_text(self) -> bool:
        """The prompt goes to the model as it is (raw, or fill-in-the-middle with a suffix), not as a chat."""
        return bool(self.raw or self.suffix)

    def to_openai_chat(self) -> dict[str, Any]:
        content: str | list[dict[str, Any]] = self.prompt
        if self.images:
            parts = [{"type": "text", "text": self.prompt}] if self.prompt else []
            content = parts + [{"type": "image_url", "image_url": image} for image in self.images]
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": content}
        ]
        return {**self.common_fields(), "messages": messages}

    def to_openai_completion(self) -> dict[str, Any]:
        fields = {k: v for k, v in self.common_fields().items() if k != "reasoning_effort"}
        return {**fields, "prompt": self.prompt, **({"suffix": self.suffix} if self.suffix else {})}
