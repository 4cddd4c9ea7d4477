"""Which models exist, their aliases, and the loaded models behind them: lookup, loading, leases, unloading.

The store is re-read on every lookup, so names added, copied, re-configured or
removed while the server runs are seen at once. A model is loaded on the first
request that needs it; concurrent first requests share one load (one task per
loaded model). Each task has its loader (server/loading.py: chat models load a
`TextGenerator`, embedding models an `Embedder`), and this registry owns every
loaded model. The `Registry` lives on the app, never in a module global; after
`close()` (shutdown) requests get a 503.

Loaded models are keyed by what they depend on (`LoadKey`): the weights folder,
its manifest's `created`, the device and the context served; not by name. Every
name that resolves to one key (`cp` copies, `create` FROM the same weights with
the same context, aliases) shares ONE loaded engine, which counts once against
the limits. A loaded model is used through a `Lease` that carries the entry of
the name the request asked for, so serving applies that name's defaults and
SYSTEM per request. A name whose weights or serving settings changed moves to a
fresh load; a loaded model is unloaded once no name in the store resolves to it
any more (each time it goes idle its names are checked in the store, on a
thread, so a model removed while serving is unloaded even if no request names it
again), and closed once the requests still using it are done. `rm` of one name
leaves a load that other names share. One set of weights is never loaded twice
at once: a reload waits until a previous load of its folder has closed.

When to unload (keep-alive, and the least recently used first under
`max_loaded_models` / `max_loaded_bytes` / `gpu_memory_budget`) is decided by server/residency.py,
and what a model takes on the GPU (and the KV cache a paged model is given) by server/gpu_memory.py;
this module acts on its decisions: the reaper task (`start()`/`close()`, run by
the app's lifecycle) and closing engines. What it reports are plain records
(`loading.ServedName`, `loading.ResidentModel`); the serving layer turns them into protocol shapes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import cast

from ortserve.core import cuda
from ortserve.core.durations import parse_duration
from ortserve.core.store import BrokenModelError, ModelEntry, ModelStore, StoreError, weights_size
from ortserve.server import request_log
from ortserve.server.engine.generation import TextGenerator
from ortserve.server.errors import (
    APIError,
    BackendError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    ServerBusyError,
)
from ortserve.server.gpu_memory import Footprint, budget_slice, default_budget
from ortserve.server.loading import (
    Engine,
    Lease,
    Loader,
    LoadKey,
    Resident,
    ResidentModel,
    ServedName,
    default_loader,
    expected_on_gpu,
    gpu_footprint,
)
from ortserve.server.residency import Limits, Usage, choose_keep_alive, expired, to_unload
from ortserve.server.settings import ServerSettings

log = logging.getLogger(__name__)


class Registry:
    def __init__(
        self,
        settings: ServerSettings,
        store: ModelStore,
        loader: Loader | None = None,
        *,
        loaders: dict[str, Loader] | None = None,
    ):
        """`loader` replaces the chat loader, `loaders` any task's (tests)."""
        self.settings = settings
        self.store = store
        self._loaders = {**({"chat": loader} if loader else {}), **(loaders or {})}
        self._loaded: dict[LoadKey, Resident] = {}
        self._reading: dict[str, asyncio.Future[ModelEntry]] = {}  # store reads in progress, by name
        self._closing: dict[asyncio.Task, str] = {}  # a model being closed -> its weights folder
        self._checks: set[asyncio.Task] = set()  # are an idle model's names still in the store?
        self._closed = False
        self._keep_alive = parse_duration(settings.keep_alive)  # a bad server setting fails at start
        self._limits = Limits(settings.max_loaded_models, settings.max_loaded_bytes, settings.gpu_memory_budget or 0)
        self._gpu_budget_read = settings.gpu_memory_budget is not None  # else read from the GPU at the first load
        self._gpu_budget_reading = asyncio.Lock()  # concurrent first loads wait for the one read
        self._wake = asyncio.Event()
        self._reaper: asyncio.Task | None = None

    # ---- what exists -----------------------------------------------------
    def _entries(self) -> list[ModelEntry]:
        try:
            return self.store.entries()
        except StoreError as exc:
            raise APIError(f"The model store could not be read: {exc}") from exc

    async def served_names(self) -> list[ServedName]:
        """Every served name, then every alias not shadowed by a name."""
        entries = await asyncio.to_thread(self._entries)
        served = [ServedName(e.name, e) for e in entries]
        seen = {s.name for s in served}
        for e in entries:
            for alias in e.config.aliases:
                if alias not in seen:
                    seen.add(alias)
                    served.append(ServedName(alias, e))
        return served

    async def served_name(self, model: str) -> ServedName:
        return ServedName(model, await self.resolve(model))

    async def resolve(self, model: str, *, param: str | None = "model") -> ModelEntry:
        """The store entry for a name or alias, or ModelNotFoundError (404); a model whose settings or manifest
        cannot be read is a 500 that names the file (someone has to fix it on the server)."""
        try:
            return await self._read(model)
        except BrokenModelError as exc:
            raise APIError(f"The model '{model}' is in the store but cannot be served: {exc}") from None
        except StoreError:
            self._forget_name(model)  # removed from the store: what it alone used is unloaded after its requests
            raise ModelNotFoundError(model, param=param) from None

    async def _read(self, model: str) -> ModelEntry:
        """`store.get(model)` on a worker thread, one read shared by the requests that ask while it runs: in a
        flood of a thousand requests for one model, a thousand reads queued on the thread pool held up every
        other model's requests for seconds (an embedding waited 3.3 s behind 1,000 chats)."""
        reading = self._reading.get(model)
        if reading is None:
            reading = asyncio.ensure_future(asyncio.to_thread(self.store.get, model))
            self._reading[model] = reading
            reading.add_done_callback(lambda done: self._read_done(model, done))
        return await asyncio.shield(reading)

    def _read_done(self, model: str, done: asyncio.Future) -> None:
        if self._reading.get(model) is done:
            del self._reading[model]
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have gone (clients that left)

    # ---- loading ---------------------------------------------------------
    def _device(self, entry: ModelEntry) -> str:
        return entry.config.device if entry.config.device != "auto" else self.settings.device

    def _num_ctx(self, entry: ModelEntry) -> int | None:
        if entry.config.num_ctx:
            return entry.config.num_ctx
        return self.settings.num_ctx or None if entry.task == "chat" else None

    def _key(self, entry: ModelEntry) -> LoadKey:
        """What a loaded model depends on: the weights and the serving settings, not names, aliases or defaults."""
        return (str(entry.folder), entry.manifest.get("created"), self._num_ctx(entry), self._device(entry))

    def keep_alive(self, entry: ModelEntry, requested: str | float | None = None) -> float:
        """Seconds `entry` stays loaded after its last request: the request's, else its settings', else the
        server's. A bad value in a request is a 400 naming `keep_alive`; a model's file with one is refused
        when read (the store lists it as a problem), so the fallback below is only a safeguard."""
        asked = configured = None
        if requested is not None:
            try:
                asked = parse_duration(requested)
            except ValueError as exc:
                raise InvalidRequestError(f"Invalid value for 'keep_alive': {exc}.", param="keep_alive") from None
        elif entry.config.keep_alive is not None:
            try:
                configured = parse_duration(entry.config.keep_alive)
            except ValueError as exc:
                log.warning("model '%s': %s; using the server's keep_alive", entry.name, exc)
        return choose_keep_alive(asked, configured, self._keep_alive)

    async def _gpu_footprint(self, entry: ModelEntry, size: int) -> tuple[int, Footprint]:
        """What `entry` would take on the GPU, and its expected share of the budget now (0: expected on the CPU).
        The budget, when not set, is read from the GPU once (nvidia-smi, off the event loop)."""
        if not self._gpu_budget_read:
            async with self._gpu_budget_reading:
                if not self._gpu_budget_read:
                    budget = default_budget(await asyncio.to_thread(cuda.gpu_memory))
                    self._limits = replace(self._limits, max_vram=budget)
                    self._gpu_budget_read = True
                    if budget:
                        log.info("GPU memory budget for loaded models: %d bytes (gpu_memory_budget to change)", budget)
        slice_bytes = budget_slice(self._limits.max_vram, self.settings.max_loaded_models)
        gpu = await asyncio.to_thread(
            gpu_footprint,
            entry,
            size,
            num_ctx=self._num_ctx(entry),
            parallel=self.settings.num_parallel,
            slice_bytes=slice_bytes,
        )
        return (gpu.vram if expected_on_gpu(entry, self._device(entry)) else 0), gpu

    async def _load(self, entry: ModelEntry, after: list[asyncio.Task], usage: Usage, gpu: Footprint) -> Engine:
        if after:  # models unloaded to make room, or a previous load of these weights: let them free their memory
            await asyncio.wait(after)
        loader = self._loaders.get(entry.task) or default_loader(entry.task, self.settings)
        log.info("loading model '%s' from %s", entry.name, entry.folder)
        # a paged model's KV pool, sized to its share of the GPU budget (passed only when there is one)
        kv = {"kv_cache_bytes": gpu.kv_cache_bytes} if usage.vram and gpu.kv_cache_bytes else {}
        try:
            engine = await loader(entry, num_ctx=self._num_ctx(entry), device=self._device(entry), **kv)
        except APIError:
            raise
        except Exception as exc:
            log.exception("loading model '%s' failed", entry.name)
            raise BackendError(f"The model '{entry.name}' could not be loaded: {exc}") from exc
        usage.vram = gpu.vram if getattr(engine, "device", None) == "cuda" else 0  # where it really runs
        return engine

    def _forget_failed(self, resident: Resident) -> None:
        def done(task: asyncio.Task) -> None:
            if task.cancelled() or task.exception() is not None:  # retrieving it silences "never retrieved"
                if self._loaded.get(resident.key) is resident:
                    del self._loaded[resident.key]  # the next request tries again

        resident.task.add_done_callback(done)

    async def acquire(self, model: str, *, task: str = "chat", keep_alive: str | float | None = None) -> Lease:
        """The loaded model for `model` (which must be a `task` model), loading it (once, shared) if needed.

        `keep_alive` (a request's, Ollama's syntax) sets how long the model stays loaded after this request."""
        entry = await self.resolve(model)
        record = request_log.current()
        if record is not None:
            record.model = model
        if entry.task != task:
            raise InvalidRequestError(
                f"The model '{model}' is a {entry.task} model and cannot be used for this endpoint.",
                param="model",
            )
        keep = self.keep_alive(entry, keep_alive)
        key = self._key(entry)
        resident = self._loaded.get(key)
        if resident is None:
            size = await asyncio.to_thread(weights_size, entry.folder)  # a walk over files: off the event loop
            vram, gpu = await self._gpu_footprint(entry, size)
            resident = self._loaded.get(key)  # a concurrent first request may have started the load
        if self._closed:
            raise OverloadedError("The server is shutting down.")
        self._forget_name(entry.name, keep=resident)  # the name's older weights or settings, if loaded
        self._check_queue(model, resident)
        if resident is None:
            # wait for models unloaded to make room, and for a previous load of these weights if still closing
            after = self._make_room(size, entry.name, vram)
            after += [t for t, folder in self._closing.items() if folder == key[0]]
            usage = Usage(size=size, vram=vram)
            resident = Resident(key, asyncio.ensure_future(self._load(entry, after, usage, gpu)), entry, usage)
            self._loaded[key] = resident
            self._forget_failed(resident)
        resident.serve(entry.name)
        resident.usage.acquire(time.monotonic(), keep)
        try:
            # shield: a request that goes away does not cancel a load others are waiting on
            engine = await asyncio.shield(resident.task)
        except BaseException as exc:
            self._release(resident)
            current = asyncio.current_task()
            cancelled_here = current is not None and current.cancelling() > 0
            if isinstance(exc, asyncio.CancelledError) and resident.task.cancelled() and not cancelled_here:
                # the load was cancelled (the server is stopping), not this request: an error JSON, not a hang-up
                raise OverloadedError(f"The model '{model}' was unloaded while it was loading; try again.") from None
            raise
        return Lease(entry, engine, resident, self._release)

    def _check_queue(self, model: str, resident: Resident | None) -> None:
        """A 503 server_busy when the model already holds as many requests as it may (max_queue waiting, plus
        num_parallel generating for chat models): a flood is refused at once, not queued for minutes."""
        if resident is not None and (error := self._full(model, resident)) is not None:
            raise error

    def _full(self, model: str, resident: Resident) -> ServerBusyError | None:
        limit = self.settings.max_queue + (self.settings.num_parallel if resident.entry.task == "chat" else 0)
        if resident.usage.users < limit:
            return None
        return ServerBusyError(
            f"The model '{model}' has {resident.usage.users} requests in flight, as many as this "
            "server queues (max_queue); try again in a moment."
        )

    def busy(self, model: str, task: str) -> ServerBusyError | None:
        """Without reading the store or waiting: the 503 that `acquire(model, task=task)` would raise now, if
        `model` is a name a loaded `task` model serves and that model's queue is full (server/busy_gate.py
        refuses a flood with it before the request is parsed). None when it cannot tell: acquire decides."""
        for resident in self._loaded.values():
            if model in resident.names and resident.entry.task == task and not resident.retired:
                return self._full(model, resident)
        return None

    def _forget_name(self, name: str, keep: Resident | None = None) -> None:
        """`name` no longer uses the loaded models other than `keep` (it was removed, or its weights or serving
        settings changed); one that no name uses any more is unloaded once its requests are done."""
        for resident in list(self._loaded.values()):
            if resident is not keep and name in resident.names:
                del resident.names[name]
                if not resident.names:
                    log.info("unloading model '%s' (removed from the store, or changed)", name)
                    self._drop(resident)

    # ---- limits and keep-alive (decided by server/residency.py) -----------------
    def _usages(self) -> dict[LoadKey, Usage]:
        return {key: resident.usage for key, resident in self._loaded.items()}

    def _make_room(self, size: int = 0, incoming: str | None = None, vram: int = 0) -> list[asyncio.Task]:
        """Unload idle models, least recently used first, until the limits hold (with the incoming model
        counted); returns the closing tasks. Busy models stay: then the limits are exceeded for a while."""
        freed: list[asyncio.Task] = []
        for key in to_unload(self._usages(), self._limits, size if incoming else None, vram):
            resident = self._loaded[key]
            log.info("unloading model '%s' to make room%s", resident.label, f" for '{incoming}'" if incoming else "")
            closing = self._drop(resident)
            if closing is not None:
                freed.append(closing)
        if incoming and self._limits.max_vram and vram > self._limits.max_vram:
            log.warning(
                "model '%s' is estimated to take %d bytes of GPU memory, more than gpu_memory_budget (%d): "
                "loading it anyway",
                incoming,
                vram,
                self._limits.max_vram,
            )
        elif incoming and self._limits.exceeded(self._usages().values(), 1, size, vram):
            log.warning(
                "loading model '%s' over the limits (max_loaded_models=%d, max_loaded_bytes=%d, "
                "gpu_memory_budget=%d): every loaded model has requests in flight",
                incoming,
                self.settings.max_loaded_models,
                self.settings.max_loaded_bytes,
                self._limits.max_vram,
            )
        return freed

    def _release(self, resident: Resident) -> None:
        unload_now = resident.usage.release(time.monotonic())
        if not resident.usage.idle or self._closed:  # closed: `close()` has closed every model already
            return
        if resident.retired:
            self._close_later(resident)
            return
        if unload_now:
            log.info("unloading model '%s' (keep_alive 0)", resident.label)
            self._drop(resident)
            return
        if self._limits.exceeded(self._usages().values()):
            self._make_room()  # models loaded over the limits while all were busy
        self._check_later(resident)
        self._wake.set()

    def _check_later(self, resident: Resident) -> None:
        """Forget the names of `resident`, now idle, that left the store (or changed) while requests used it,
        and unload it if none is left: a model removed while serving is unloaded after its requests even if
        none names it again."""
        check = asyncio.ensure_future(self._check_stored(resident))
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    def _stored_keys(self, names: list[str]) -> dict[str, LoadKey | None]:
        keys: dict[str, LoadKey | None] = {}
        for name in names:
            try:
                keys[name] = self._key(self.store.get(name))
            except StoreError:
                keys[name] = None
        return keys

    async def _check_stored(self, resident: Resident) -> None:
        try:
            keys = await asyncio.to_thread(self._stored_keys, list(resident.names))
        except Exception:  # an unreadable store: the next request says so
            log.exception("checking model '%s' in the store failed", resident.label)
            return
        if self._loaded.get(resident.key) is not resident:
            return
        for name, key in keys.items():
            if key != resident.key and name in resident.names:
                log.info("model '%s' %s", name, "was removed from the store" if key is None else "changed")
                del resident.names[name]
        if not resident.names:
            log.info("unloading model '%s' (no name in the store uses it)", resident.entry.name)
            self._drop(resident)

    def _drop(self, resident: Resident) -> asyncio.Task | None:
        """Forget `resident` (a later request loads the model anew) and close it once it is not in use."""
        if self._loaded.get(resident.key) is resident:
            del self._loaded[resident.key]
        if resident.retired:
            return None
        resident.retired = True
        return self._close_later(resident) if resident.usage.idle else None

    def _close_later(self, resident: Resident) -> asyncio.Task:
        closing = asyncio.ensure_future(resident.close())
        self._closing[closing] = resident.key[0]
        closing.add_done_callback(lambda task: self._closing.pop(task, None))
        return closing

    def unload_expired(self) -> float | None:
        """Unload the idle models whose keep-alive ran out; the seconds until the next one expires, if any."""
        due, wait = expired(self._usages(), time.monotonic())
        for key in due:
            resident = self._loaded[key]
            log.info("unloading model '%s' (idle for its keep_alive)", resident.label)
            self._drop(resident)
        return wait

    async def _reap(self) -> None:
        while True:
            self._wake.clear()
            wait = self.unload_expired()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def start(self) -> None:
        """Start the reaper that unloads idle models (the app's startup)."""
        if self._reaper is None:
            self._wake = asyncio.Event()  # bound to the running loop
            self._reaper = asyncio.ensure_future(self._reap())

    # ---- what is loaded ----------------------------------------------------
    def loaded(self) -> list[str]:
        """The names served by a loaded model (each loaded model's, most recently used first)."""
        return [name for model in self.running() for name in model.names]

    def running(self) -> list[ResidentModel]:
        """The loaded models, each once, with the names it serves (GET /api/ps, /health)."""
        now = time.monotonic()
        return [r.record(now) for r in self._loaded.values() if r.ready and r.names]

    def interrupt(self, error: APIError) -> None:
        """End every generation in flight with `error` (the shutdown's grace ran out)."""
        for resident in self._loaded.values():
            if resident.ready and resident.entry.task == "chat":
                cast(TextGenerator, resident.task.result()).interrupt(error)

    async def close(self) -> None:
        """Stop the reaper and close every loaded model (at shutdown); later requests get a 503."""
        self._closed = True
        for task in [self._reaper, *self._checks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in (self._reaper, *self._checks) if t is not None], return_exceptions=True)
        self._reaper = None
        residents, self._loaded = list(self._loaded.values()), {}
        for resident in residents:
            resident.retired = True
        await asyncio.gather(*(r.close() for r in residents), *self._closing)
