"""Loading a stored model into an engine: the loader of each task, a load's GPU memory estimate (the facts
server/gpu_memory.py computes on: the model's KV shape, the GPU's memory), what a load depends on
(`LoadKey`), and one load held in memory (`Resident`), up to closing it.

The registry (server/registry.py) decides when to load, who shares a load and when to close it; this
module is only how.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from ortserve.core.store import ModelEntry
from ortserve.server.engine.embedder import Embedder
from ortserve.server.engine.generation import TextGenerator
from ortserve.server.errors import InvalidRequestError
from ortserve.server.gpu_memory import Footprint, KvLayout, footprint
from ortserve.server.residency import Usage
from ortserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

Engine = TextGenerator | Embedder
Loader = Callable[..., Awaitable[Engine]]  # (entry, *, num_ctx, device) -> a loaded model
LoadKey = tuple[str, Any, int | None, str]  # (weights folder, manifest's created, context served, device)

# task -> (module, function) of its loader, imported on first load: the engines are heavy
LOADERS: dict[str, tuple[str, str]] = {
    "chat": ("ortserve.server.engine", "load_generator"),
    "embedding": ("ortserve.server.engine.ort_embedder", "load_embedder"),
}


def default_loader(task: str, settings: ServerSettings) -> Loader:
    """The loader of `task`'s models, with the server's running settings bound (threads; for chat models also
    num_parallel and prefill_chunk); a 400 naming `model` for a task that cannot be served."""
    if task not in LOADERS:
        raise InvalidRequestError(f"Models for the task '{task}' cannot be served yet.", param="model")
    module, function = LOADERS[task]
    load = getattr(importlib.import_module(module), function)
    running: dict[str, Any] = {"threads": settings.threads}
    if task == "chat":
        running.update(
            parallel=settings.num_parallel,
            prefill_chunk=settings.prefill_chunk,
            memory_limit=settings.runner_memory_limit,
            prompt_cache_bytes=settings.prompt_cache_bytes,
            batched=settings.batch_decode,
        )
    return functools.partial(load, **running)


def expected_on_gpu(entry: ModelEntry, device: str) -> bool:
    """Whether a model is expected to load on the GPU before it loads: asked for CUDA, or `auto` for a model
    built for CUDA (an embedding model that `auto` puts on the GPU is counted once loaded)."""
    return device == "cuda" or (device == "auto" and entry.manifest.get("device") == "cuda")


def gpu_footprint(
    entry: ModelEntry, weights: int, *, num_ctx: int | None, parallel: int, slice_bytes: int
) -> Footprint:
    """What `entry` takes if it runs on the GPU (server/gpu_memory.py): its KV shape and context are read from
    its genai_config.json (chat models); a file that cannot be read counts the weights alone."""
    if entry.task != "chat":
        return footprint(weights, layout=None, context=0, parallel=parallel, slice_bytes=slice_bytes)
    try:
        genai = json.loads((entry.folder / "genai_config.json").read_text(encoding="utf-8"))
        layout = KvLayout.from_genai(genai)
        model_ctx = int(genai["model"]["context_length"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return footprint(weights, layout=None, context=0, parallel=parallel, slice_bytes=slice_bytes)
    context = min(num_ctx, model_ctx) if num_ctx else model_ctx
    return footprint(weights, layout=layout, context=context, parallel=parallel, slice_bytes=slice_bytes)


@dataclass(eq=False)
class Resident:
    """One load of one set of weights (a runner process, or an embedder), however many names use it: the task
    loading it, those names, and how it is used (what server/residency.py decides on)."""

    key: LoadKey
    task: asyncio.Task[Engine]
    entry: ModelEntry  # the entry it was loaded for (its task, folder and manifest)
    usage: Usage
    names: dict[str, None] = field(default_factory=dict)  # the names it serves, most recently used last
    retired: bool = False  # forgotten by the registry: closed once its requests are done

    @property
    def ready(self) -> bool:
        return self.task.done() and not self.task.cancelled() and self.task.exception() is None

    @property
    def label(self) -> str:
        """Its names, for logs."""
        return "', '".join(reversed(self.names)) or self.entry.name

    def serve(self, name: str) -> None:
        """`name` uses it now (the most recently used)."""
        self.names.pop(name, None)
        self.names[name] = None

    def record(self, now: float) -> ResidentModel:
        """What a loaded model reports (GET /api/ps, /health, /metrics) at monotonic time `now`."""
        engine = self.task.result()
        device = getattr(engine, "device", None) or "cpu"
        return ResidentModel(
            names=tuple(reversed(self.names)),
            task=self.entry.task,
            device=device,
            size=self.usage.size,
            # the GPU estimate; on another accelerator (DirectML, CoreML) its weights
            size_vram=self.usage.vram or (0 if device == "cpu" else self.usage.size),
            expires_in=self.usage.expires_in(now),
            context_length=getattr(engine, "context_length", None),
            requests=self.usage.users,
            manifest=self.entry.manifest,
            weights=self.entry.folder.name,
            pid=getattr(engine, "pid", None),
            restarts=getattr(engine, "restarts", 0),
            batch_sizes=getattr(engine, "batch_sizes", None) or {},
        )

    async def close(self) -> None:
        """Cancel the load, or close the loaded engine."""
        if not self.task.done():
            self.task.cancel()
        await asyncio.wait([self.task])
        if self.task.cancelled() or self.task.exception() is not None:
            return  # a failed or cancelled load has nothing to close
        try:
            await self.task.result().close()
        except Exception:
            log.exception("closing model '%s' failed", self.label)


@dataclass(frozen=True)
class ServedName:
    """A name clients may send as `model` (a store name or an alias) and the store entry that serves it."""

    name: str
    entry: ModelEntry


@dataclass(frozen=True)
class ResidentModel:
    """One loaded model as the registry reports it (GET /api/ps, /health): engine- and protocol-neutral."""

    names: tuple[str, ...]  # the names it has served since it loaded, most recently used first
    task: str
    device: str
    size: int  # bytes of its files on disk
    size_vram: int  # estimated bytes of GPU memory (server/gpu_memory.py); 0 on the CPU
    expires_in: float | None  # seconds of keep-alive left (the full time while in use); None: kept forever
    context_length: int | None
    requests: int  # in flight
    manifest: dict[str, Any]
    weights: str = ""  # the weights folder's name: the same for every name sharing them
    pid: int | None = None  # the runner process's, for a chat model
    restarts: int = 0  # runner processes started again after one died
    batch_sizes: dict[int, int] = field(default_factory=dict)  # an embedding model's rows per batch run -> runs

    @property
    def name(self) -> str:
        """The name it was last used under."""
        return self.names[0]


@dataclass(eq=False)
class Lease:
    """A loaded model held for one request; `release()` exactly once when done. `entry` is the requested
    name's own (its defaults, SYSTEM), whichever name loaded the engine."""

    entry: ModelEntry
    engine: Engine
    _resident: Resident
    _release: Callable[[Resident], None]  # the registry's
    _released: bool = field(default=False, repr=False)

    @property
    def generator(self) -> TextGenerator:  # a lease acquired with task="chat"
        return cast(TextGenerator, self.engine)

    @property
    def embedder(self) -> Embedder:  # a lease acquired with task="embedding"
        return cast(Embedder, self.engine)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release(self._resident)
