"""Ollama's native model API: /api/embed, /api/embeddings, /api/show, /api/copy, /api/delete, /api/create,
/api/pull request models (pure pydantic). The listings (/api/tags, /api/show) are built as Ollama's JSON in
serving/ollama_models.py; /api/ps has its own models (protocol/ps.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ortserve.server.errors import InvalidRequestError
from ortserve.server.protocol.common import KeepAlive, OpenAIModel
from ortserve.server.protocol.ollama import Options


def _model_or_name(data: Any) -> Any:
    """Ollama's older clients send `name` where newer ones send `model`."""
    if isinstance(data, dict) and "model" not in data and "name" in data:
        return {**data, "model": data["name"]}
    return data


class OllamaEmbedRequest(OpenAIModel):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(default_factory=list)
    truncate: bool | None = True  # Ollama's default: cut inputs at the model's limit
    dimensions: int | None = Field(None, ge=1)
    options: Options | None = None
    keep_alive: KeepAlive = None

    def to_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": self.input, "truncate": self.truncate is not False}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body


class OllamaEmbeddingsRequest(OpenAIModel):
    """The older /api/embeddings: one `prompt`, one `embedding`."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None

    _name = model_validator(mode="before")(_model_or_name)


class OllamaModelRequest(OpenAIModel):
    """/api/show and /api/delete: one model by `model` (or `name`)."""

    model: str = Field(min_length=1)
    verbose: bool | None = None

    _name = model_validator(mode="before")(_model_or_name)


class OllamaCopyRequest(OpenAIModel):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class OllamaCreateRequest(OpenAIModel):
    """A new name from a model in the store with its own SYSTEM and PARAMETERs (as `ortserve create`)."""

    model: str = Field(min_length=1)
    from_: str | None = Field(None, alias="from")
    system: str | None = None
    parameters: dict[str, Any] | None = None
    stream: bool | None = True
    template: str | None = None
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    quantize: str | None = None
    messages: list[Any] | None = None
    modelfile: str | None = None

    _name = model_validator(mode="before")(_model_or_name)

    def check(self) -> None:
        refused = {
            "template": "ortserve renders prompts with the model's own chat template",
            "files": "creating from uploaded files is not supported; convert a model with `ortserve convert`",
            "adapters": "LoRA adapters cannot be applied to converted ONNX models yet",
            "quantize": "quantize while converting: `ortserve convert --precision`",
            "messages": "a conversation that precedes every request is not supported",
            "modelfile": "this older field is not read; send 'from', 'system' and 'parameters'",
        }
        for field, why in refused.items():
            if getattr(self, field):
                raise InvalidRequestError(f"'{field}' is not supported: {why}.", param=field)
        if not self.from_:
            raise InvalidRequestError("Missing required parameter: 'from' (a model in the store).", param="from")


class OllamaPullRequest(OpenAIModel):
    model: str = Field(min_length=1)
    insecure: bool | None = None
    stream: bool | None = True

    _name = model_validator(mode="before")(_model_or_name)
