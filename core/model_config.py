"""Per-model settings: what `<models>/NAME.toml` holds (`ModelConfig`, its `SamplingDefaults`).

The conversion writes them, the store reads them, the server serves by them; `describe` puts a
pydantic error in the one line that every settings message uses.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ortserve.core.devices import DEVICES
from ortserve.core.durations import check_duration

# Ollama's sampling parameters (Modelfile PARAMETERs and request options) ortserve cannot honour, and llama.cpp's
# hardware and runtime tuning, which has no meaning for ONNX Runtime (the Modelfile and /api's options read them)
UNSUPPORTED_PARAMETERS = {  # change sampling in ways we cannot reproduce: an error
    "mirostat",
    "mirostat_eta",
    "mirostat_tau",
    "tfs_z",
    "typical_p",
    "min_p",
    "repeat_last_n",
    "penalize_newline",
}
IGNORED_PARAMETERS = {  # llama.cpp hardware and runtime tuning: a warning
    "num_gpu",
    "num_thread",
    "num_batch",
    "num_keep",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "use_mmap",
    "use_mlock",
    "numa",
    "vocab_only",
    "logits_all",
    "num_gqa",
}


def describe(exc: ValidationError, origins: dict[str, str] | None = None) -> str:
    """A pydantic error in one line: `field: problem (where it came from)` for each problem."""
    origins = origins or {}
    parts = []
    for e in exc.errors():
        field = ".".join(map(str, e["loc"]))
        origin = origins.get(str(e["loc"][0])) if e["loc"] else None
        parts.append(f"{field}: {e['msg']}" + (f" ({origin})" if origin else ""))
    return "; ".join(parts)


def check_device(value: object) -> object:
    """A `device` field (a pydantic "before" validator): one of DEVICES; ValueError naming them otherwise."""
    if value not in DEVICES:
        raise ValueError(f"unknown device {value!r}; devices: {', '.join(DEVICES)}")
    return value


class SamplingDefaults(BaseModel):
    """Per-model defaults, used when a request leaves the field out."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, ge=1e-5)  # smaller divides the logits to inf (as requests)


class ModelConfig(BaseModel):
    """What `<models>/NAME.toml` holds: how a stored model is served under NAME."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(
        None, description="the model folder it serves (beside this file); defaults to the model's own name"
    )
    aliases: list[str] = Field(default_factory=list)
    num_ctx: int | None = Field(None, ge=16, description="context length served; defaults to the model's")
    device: str = "auto"
    owned_by: str = "library"
    system: str | None = None
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)
    keep_alive: str | None = Field(
        None,
        description="how long the model stays loaded after its last request "
        "(Ollama's syntax: '5m', '1h', '30s', seconds, 0 = unload at once, "
        "negative = forever); default: the server's",
    )

    _device = field_validator("device", mode="before")(check_device)
    _keep_alive = field_validator("keep_alive", mode="before")(check_duration)
