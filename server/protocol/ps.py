"""GET /api/ps: the loaded models in Ollama's shape, plus ortserve's `device`, `task`, `expires_in`,
`context_length` and `requests` (in flight)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class LoadedModel:
    """What the registry knows of one loaded model (engine-neutral)."""

    name: str
    task: str
    device: str
    size: int  # bytes of its files on disk
    expires_in: float | None  # seconds of keep-alive left (the full time while in use); None: kept forever
    context_length: int | None
    requests: int
    manifest: dict[str, Any]


class ModelDetails(BaseModel):
    format: str = "onnx"
    family: str | None = None
    quantization_level: str | None = None


class RunningModel(BaseModel):
    name: str
    model: str
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

    @classmethod
    def of(cls, loaded: LoadedModel, now: datetime | None = None) -> "RunningModel":
        expires_in, expires_at = loaded.expires_in, None
        if expires_in is not None:
            try:  # a keep_alive of many centuries is forever, as far as a date can say
                expires_at = (now or datetime.now(timezone.utc)) + timedelta(seconds=expires_in)
            except OverflowError:
                expires_in = None
        manifest = loaded.manifest
        return cls(
            name=loaded.name,
            model=loaded.name,
            size=loaded.size,
            size_vram=0 if loaded.device == "cpu" else loaded.size,
            details=ModelDetails(family=manifest.get("family") or manifest.get("model_type"),
                                 quantization_level=manifest.get("precision")),
            expires_at=expires_at.isoformat(timespec="seconds") if expires_at else None,
            expires_in=None if expires_in is None else round(expires_in, 1),
            device=loaded.device,
            task=loaded.task,
            context_length=loaded.context_length,
            requests=loaded.requests,
        )


class ProcessList(BaseModel):
    models: list[RunningModel]
