"""GET /api/ps: the loaded models in Ollama's shape, plus ortserve's `names` (every name served by the one
loaded model), `device`, `task`, `expires_in`, `context_length` and `requests` (in flight)."""

from __future__ import annotations

from pydantic import BaseModel


class ModelDetails(BaseModel):
    format: str = "onnx"
    family: str | None = None
    quantization_level: str | None = None


class RunningModel(BaseModel):
    """One loaded model: `name` and `model` are the name it was last used under, `names` all it serves."""

    name: str
    model: str
    names: list[str]
    size: int
    size_vram: int
    digest: str = ""
    details: ModelDetails
    expires_at: str | None  # ISO 8601; None: kept loaded until the server stops
    expires_in: float | None
    device: str
    task: str
    context_length: int | None
    requests: int


class ProcessList(BaseModel):
    models: list[RunningModel]
