"""The server's settings: `ServerSettings` and its one loader, `ServerSettings.load`.

Sources, lowest first: built-in defaults, `configs/server.toml`, environment
(`ORTSERVE_*`), command-line flags; every setting has all four, and a bad value
is refused at start naming where it came from. Per-model settings
(`ortserve.core.model_config`) live in the store, beside the weights.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ortserve.core.durations import check_duration
from ortserve.core.home import default_configs_dir, default_models_dir
from ortserve.core.model_config import check_device, describe

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]  # what `serve` logs to stderr, from this level up


class SettingsError(Exception):
    """Server settings that cannot be used; the message names the file, variable or flag to fix."""


class ServerSettings(BaseModel):
    """Every server setting; `load` reads them (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, min_length=1)  # "" would silently serve without a key
    models_dir: Path = Field(default_factory=default_models_dir)
    configs_dir: Path = Field(default_factory=default_configs_dir)
    device: str = "auto"
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    shutdown_grace: float = Field(
        10.0,
        ge=0,
        description="seconds requests in flight get to finish after "
        "SIGINT/SIGTERM; then they end with a 503 server_shutting_down",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a request body may take to arrive in all; a "
        "slower or stalled body gets a 408 and its connection is freed",
    )
    num_ctx: int = Field(
        4096,
        ge=0,
        description="context served for chat models whose settings set none "
        "(as Ollama's default); 0: each model's full context. A request's KV cache is sized "
        "prompt + max_tokens, so an unbounded default would reserve a 128k context per request",
    )
    # ---- loading (issue 9) ----
    keep_alive: str = Field("5m", description="default time a model stays loaded after its last request")
    max_loaded_models: int = Field(
        3, ge=0, description="models loaded at once; the least recently used is unloaded first; 0: no limit"
    )
    max_loaded_bytes: int = Field(0, ge=0, description="memory budget for loaded models' weights; 0: no budget")
    gpu_memory_budget: int | None = Field(
        None,
        ge=0,
        description="bytes of GPU memory the loaded models may take in all (weights, KV cache, CUDA context: "
        "server/gpu_memory.py's estimate); the least recently used idle models are unloaded to fit, and each "
        "paged model's KV cache is sized to its share; default: 90% of the GPU's memory (nvidia-smi), or what "
        "other programs leave free if less; "
        "0: no budget (a paged model takes the builder's share of the free memory)",
    )
    # ---- images in chat (issue 7) ----
    image_fetch_allow: list[str] = Field(
        default_factory=list,
        description="hosts / addresses / CIDR ranges that image URLs may reach although they are private or loopback",
    )
    image_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest image, fetched or inline")
    image_fetch_timeout: float = Field(10.0, gt=0, description="seconds for fetching one image URL, in all")
    image_max_redirects: int = Field(3, ge=0)
    max_images: int = Field(8, ge=1, description="images per request")
    bootstrap: bool = Field(True, description="on an empty store, set up the embedded default models first")
    # ---- who may talk to the server (server/host_rules.py) ----
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="more Host names the server answers "
        "to besides this machine's ('.example.lan': every name under it; '*': any)",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="more browser origins that may use "
        "the API besides this machine's pages ('https://*.example.com', '*')",
    )
    # ---- running models ----
    threads: int | None = Field(None, ge=1, description="intra-op CPU threads per model; default: physical cores")
    num_parallel: int = Field(4, ge=1, description="requests generating at once per chat model; others queue")
    runner_memory_limit: int | None = Field(
        None,
        ge=0,
        description="bytes of resident memory a chat model's "
        "runner may hold before it is stopped (its requests fail, the next "
        "starts a new one); default: twice the weights plus 2 GiB; 0: none",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="the access log: one line per request, as text or as a JSON object"
    )
    metrics_open: bool = Field(False, description="serve GET /metrics without the API key (when one is set)")
    max_requests: int = Field(
        2048, ge=1, description="HTTP requests in flight across the server; more get a 503 server_busy at once"
    )
    max_queue: int = Field(
        512,
        ge=1,
        description="requests a model holds waiting (beyond num_parallel for chat "
        "models); more get a 503 server_busy with Retry-After (as Ollama's OLLAMA_MAX_QUEUE)",
    )
    prefill_chunk: int = Field(128, ge=1, description="prompt tokens per scheduler step of a chat model")
    prompt_cache_bytes: int | None = Field(
        None,
        ge=0,
        description="bytes of KV cache a chat model keeps from finished requests, so that a "
        "later prompt starting with the same tokens (a chat's next turn, a shared system prompt) skips their "
        "prefill (llama-server's cache_prompt); the least recently used goes first; default: 1 GiB, at most a "
        "quarter of the runner's memory limit; 0: off",
    )
    batch_decode: bool = Field(
        True,
        description="on a CPU, decode the next token of every request of a chat model in one onnxruntime call "
        "(aggregate speed grows with streams); false: one og.Generator per request",
    )
    # ---- stored responses of /v1/responses (server/responses_store.py) ----
    responses_db: Path | None = Field(
        None, description="the SQLite file of stored responses; default: responses.db beside the store (in the home)"
    )
    responses_ttl: str = Field(
        "720h", description="how long a stored response is kept (30 days; '24h', '90m'; negative: for ever)"
    )
    responses_max_count: int = Field(10000, ge=1, description="stored responses kept at most; the oldest go first")
    responses_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="bytes of stored responses kept at most; the oldest go first"
    )
    log_level: LogLevel = "INFO"

    _device = field_validator("device", mode="before")(check_device)
    _keep_alive = field_validator("keep_alive", "responses_ttl", mode="before")(check_duration)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        """ORTSERVE_LOG_LEVEL=debug: log levels in any case, as Python's logging reads them."""
        return value.upper() if isinstance(value, str) else value

    @field_validator("image_fetch_allow", "allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """ORTSERVE_IMAGE_FETCH_ALLOW="127.0.0.1,10.0.0.0/8": a comma-separated list in the environment (the
        same for ORTSERVE_ALLOWED_HOSTS and ORTSERVE_ALLOWED_ORIGINS)."""
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @property
    def responses_path(self) -> Path:
        """Where the stored responses are: `responses_db`, else <home>/responses.db (beside the store)."""
        return self.responses_db or self.models_dir.parent / "responses.db"

    @classmethod
    def load(cls, **overrides: Any) -> ServerSettings:
        """Defaults < configs/server.toml < ORTSERVE_* environment < overrides (flags); SettingsError names
        where a bad value came from."""
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        configs_dir = Path(overrides.get("configs_dir") or default_configs_dir())
        server_toml = configs_dir / "server.toml"
        if server_toml.is_file():
            table = _read_server_toml(server_toml)
            values.update(table)
            origins.update(dict.fromkeys(table, str(server_toml)))
        for name in cls.model_fields:
            env = os.environ.get(f"ORTSERVE_{name.upper()}")
            if env:  # set but empty (`ORTSERVE_HOST=`) means unset, as in most tools
                values[name] = env
                origins[name] = f"ORTSERVE_{name.upper()}" + ("" if name == "api_key" else f"={env!r}")
        for name, value in overrides.items():  # flags: --port for port, --no-bootstrap for bootstrap
            if value is not None:
                values[name] = value
                origins[name] = "--no-bootstrap" if name == "bootstrap" else f"--{name.replace('_', '-')}"
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(f"invalid settings: {describe(exc, origins)}") from None


def _read_server_toml(path: Path) -> dict[str, Any]:
    """The [server] table of configs/server.toml."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("server", {})
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: 'server' must be the [server] table of settings")
    outside = [key for key in data if key != "server"]
    if outside:  # `port = 9000` above the [server] line would be silently ignored
        raise SettingsError(f"{path}: {', '.join(outside)}: settings go under the [server] line")
    return table
