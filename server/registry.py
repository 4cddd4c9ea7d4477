"""Which models exist, their aliases, and loading, keeping and unloading them.

The store is re-read on every lookup, so names added, copied, re-configured or
removed while the server runs are seen at once. A model is loaded on the first
request that needs it; concurrent first requests share one load (one task per
model). Each task has its loader (`LOADERS`: chat models load a `TextGenerator`,
embedding models an `Embedder`), and this registry owns every loaded model. A
loaded model is used through a `Lease`, so one whose weights or serving settings
changed in the store (or that was removed from it) is replaced, and closed once
the requests still using it are done (each time a model goes idle the store is
checked, on a thread, so a model removed while serving is unloaded even if no
request names it again). A model is never loaded twice at once: a reload waits
until its previous instance has closed. The `Registry` lives on the app, never
in a module global; after `close()` (shutdown) requests get a 503.

Keep-alive (as Ollama): once its last request is done, a model stays loaded for
its keep-alive time (the request's `keep_alive`, else the model's settings, else
the server's; 0: unload at once, negative: forever), then the reaper task
(`start()`/`close()`, run by the app's lifecycle) unloads it. Limits: at most
`max_loaded_models` models and `max_loaded_bytes` of weights (their size on
disk) are loaded at once; loading one more first unloads the least recently used
idle models. A model with requests in flight is never unloaded: when every
loaded model is busy, the new one is loaded over the limit (with a warning), and
the limit is restored as soon as models become idle.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, cast

from ortserve.core.durations import FOREVER, parse_duration
from ortserve.core.store import BrokenModelError, ModelEntry, ModelStore, StoreError
from ortserve.server.engine.base import TextGenerator
from ortserve.server.engine.embedder import Embedder
from ortserve.server.errors import APIError, BackendError, InvalidRequestError, ModelNotFoundError, OverloadedError
from ortserve.server.protocol.models import ModelCard
from ortserve.server.protocol.ps import LoadedModel
from ortserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

Engine = TextGenerator | Embedder
Loader = Callable[..., Awaitable[Engine]]  # (entry, *, num_ctx, device) -> a loaded model

# task -> (module, function) of its loader, imported on first load: the engines are heavy
LOADERS: dict[str, tuple[str, str]] = {
    "chat": ("ortserve.server.engine", "load_generator"),
    "embedding": ("ortserve.server.engine.embeddings", "load_embedder"),
}


def _default_loader(task: str) -> Loader:
    if task not in LOADERS:
        raise InvalidRequestError(f"Models for the task '{task}' cannot be served yet.", param="model")
    module, function = LOADERS[task]
    return getattr(importlib.import_module(module), function)


def weights_size(folder: Path) -> int:
    """A model's memory estimate: the size of its files on disk (the weights dominate)."""
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except OSError:
        return 0


@dataclass(eq=False)
class _Slot:
    """One load of one model: the task that loads it, who is using the result, and when it expires."""

    key: tuple
    task: asyncio.Task[Engine]
    entry: ModelEntry | None = None
    size: int = 0  # estimated bytes
    users: int = 0
    retired: bool = False
    keep_alive: float = 0.0  # seconds after the last request (FOREVER: never unloaded for idleness)
    last_used: float = field(default_factory=time.monotonic)
    expires: float | None = None  # monotonic deadline while idle; None while in use

    @property
    def ready(self) -> bool:
        return self.task.done() and not self.task.cancelled() and self.task.exception() is None


@dataclass(eq=False)
class Lease:
    """A loaded model held for one request; `release()` exactly once when done."""

    entry: ModelEntry
    engine: Engine
    _slot: _Slot
    _registry: "Registry"
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
            self._registry._release(self._slot)


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
        self._slots: dict[str, _Slot] = {}
        self._closing: dict[asyncio.Task, str] = {}  # a model being closed -> its name
        self._checks: set[asyncio.Task] = set()  # is an idle model still in the store?
        self._closed = False
        self._keep_alive = parse_duration(settings.keep_alive)  # a bad server setting fails at start
        self._wake = asyncio.Event()
        self._reaper: asyncio.Task | None = None

    # ---- what exists -----------------------------------------------------
    def _entries(self) -> list[ModelEntry]:
        try:
            return self.store.entries()
        except StoreError as exc:
            raise APIError(f"The model store could not be read: {exc}") from exc

    async def cards(self) -> list[ModelCard]:
        """Every served name, then every alias not shadowed by a name."""
        entries = await asyncio.to_thread(self._entries)
        cards = [ModelCard(id=e.name, created=e.created, owned_by=e.config.owned_by) for e in entries]
        seen = {card.id for card in cards}
        for e in entries:
            for alias in e.config.aliases:
                if alias not in seen:
                    seen.add(alias)
                    cards.append(ModelCard(id=alias, created=e.created, owned_by=e.config.owned_by))
        return cards

    async def card(self, model: str) -> ModelCard:
        entry = await self.resolve(model)
        return ModelCard(id=model, created=entry.created, owned_by=entry.config.owned_by)

    async def resolve(self, model: str, *, param: str | None = "model") -> ModelEntry:
        """The store entry for a name or alias, or ModelNotFoundError (404); a model whose settings or manifest
        cannot be read is a 500 that names the file (someone has to fix it on the server)."""
        try:
            return await asyncio.to_thread(self.store.get, model)
        except BrokenModelError as exc:
            raise APIError(f"The model '{model}' is in the store but cannot be served: {exc}") from None
        except StoreError:
            slot = self._slots.get(model)
            if slot is not None:  # removed from the store: unload it once its requests are done
                self._drop(model, slot)
            raise ModelNotFoundError(model, param=param) from None

    # ---- loading ---------------------------------------------------------
    def _device(self, entry: ModelEntry) -> str:
        return entry.config.device if entry.config.device != "auto" else self.settings.device

    def _num_ctx(self, entry: ModelEntry) -> int | None:
        if entry.config.num_ctx:
            return entry.config.num_ctx
        return self.settings.num_ctx or None if entry.task == "chat" else None

    def _key(self, entry: ModelEntry) -> tuple:
        """What a loaded model depends on: the weights and the serving settings, not aliases or defaults."""
        return (str(entry.folder), entry.manifest.get("created"), self._num_ctx(entry), self._device(entry))

    def keep_alive(self, entry: ModelEntry, requested: str | float | None = None) -> float:
        """Seconds `entry` stays loaded after its last request: the request's, else its settings', else the
        server's. A bad value in a request is a 400 naming `keep_alive`; a model's file with one is refused
        when read (the store lists it as a problem), so the fallback below is only a safeguard."""
        if requested is not None:
            try:
                return parse_duration(requested)
            except ValueError as exc:
                raise InvalidRequestError(f"Invalid value for 'keep_alive': {exc}.", param="keep_alive") from None
        if entry.config.keep_alive is not None:
            try:
                return parse_duration(entry.config.keep_alive)
            except ValueError as exc:
                log.warning("model '%s': %s; using the server's keep_alive", entry.name, exc)
        return self._keep_alive

    async def _load(self, entry: ModelEntry, after: list[asyncio.Task]) -> Engine:
        if after:  # models unloaded to make room, or this one's previous instance: let them free their memory
            await asyncio.wait(after)
        loader = self._loaders.get(entry.task) or _default_loader(entry.task)
        log.info("loading model '%s' from %s", entry.name, entry.folder)
        try:
            return await loader(entry, num_ctx=self._num_ctx(entry), device=self._device(entry))
        except APIError:
            raise
        except Exception as exc:
            log.exception("loading model '%s' failed", entry.name)
            raise BackendError(f"The model '{entry.name}' could not be loaded: {exc}") from exc

    def _forget_failed(self, name: str, slot: _Slot) -> None:
        def done(task: asyncio.Task) -> None:
            if task.cancelled() or task.exception() is not None:  # retrieving it silences "never retrieved"
                if self._slots.get(name) is slot:
                    del self._slots[name]  # the next request tries again

        slot.task.add_done_callback(done)

    async def acquire(self, model: str, *, task: str = "chat", keep_alive: str | float | None = None) -> Lease:
        """The loaded model for `model` (which must be a `task` model), loading it (once, shared) if needed.

        `keep_alive` (a request's, Ollama's syntax) sets how long the model stays loaded after this request."""
        entry = await self.resolve(model)
        if entry.task != task:
            raise InvalidRequestError(
                f"The model '{model}' is a {entry.task} model and cannot be used for this endpoint.",
                param="model",
            )
        keep = self.keep_alive(entry, keep_alive)
        key = self._key(entry)
        slot = self._current(entry.name, key)
        if slot is None:
            size = await asyncio.to_thread(weights_size, entry.folder)  # a walk over files: off the event loop
            slot = self._current(entry.name, key)  # a concurrent first request may have started the load
        if self._closed:
            raise OverloadedError("The server is shutting down.")
        if slot is None:
            # wait for models unloaded to make room, and for this model's previous instance if still closing
            after = self._make_room(size, entry.name) + [t for t, n in self._closing.items() if n == entry.name]
            slot = _Slot(key, asyncio.ensure_future(self._load(entry, after)), entry=entry, size=size)
            self._slots[entry.name] = slot
            self._forget_failed(entry.name, slot)
        slot.entry, slot.keep_alive, slot.expires = entry, keep, None
        slot.users += 1
        slot.last_used = time.monotonic()
        try:
            # shield: a request that goes away does not cancel a load others are waiting on
            engine = await asyncio.shield(slot.task)
        except BaseException as exc:
            self._release(slot)
            current = asyncio.current_task()
            cancelled_here = current is not None and current.cancelling() > 0
            if isinstance(exc, asyncio.CancelledError) and slot.task.cancelled() and not cancelled_here:
                # the load was cancelled (the server is stopping), not this request: an error JSON, not a hang-up
                raise OverloadedError(f"The model '{model}' was unloaded while it was loading; try again.") from None
            raise
        return Lease(entry, engine, slot, self)

    def _current(self, name: str, key: tuple) -> _Slot | None:
        """The slot loading or holding `name` as `key` says; a slot of older weights or settings is dropped."""
        slot = self._slots.get(name)
        if slot is not None and slot.key != key:
            self._drop(name, slot)
            slot = None
        return slot

    # ---- limits and keep-alive -------------------------------------------
    def _over(self, extra_models: int, extra_bytes: int) -> bool:
        models = len(self._slots) + extra_models
        size = sum(s.size for s in self._slots.values()) + extra_bytes
        limit_models, limit_bytes = self.settings.max_loaded_models, self.settings.max_loaded_bytes
        return bool((limit_models and models > limit_models) or (limit_bytes and size > limit_bytes))

    def _make_room(self, size: int = 0, incoming: str | None = None) -> list[asyncio.Task]:
        """Unload idle models, least recently used first, until the limits hold (with the incoming model
        counted); returns the closing tasks. Busy models stay: then the limits are exceeded for a while."""
        extra = 1 if incoming else 0
        freed: list[asyncio.Task] = []
        idle = sorted((s for s in self._slots.values() if s.users == 0), key=lambda s: s.last_used)
        for slot in idle:
            if not self._over(extra, size):
                break
            name = next(n for n, s in self._slots.items() if s is slot)
            log.info("unloading model '%s' to make room%s", name, f" for '{incoming}'" if incoming else "")
            closing = self._drop(name, slot)
            if closing is not None:
                freed.append(closing)
        if incoming and self._over(extra, size):
            log.warning("loading model '%s' over the limits (max_loaded_models=%d, max_loaded_bytes=%d): "
                        "every loaded model has requests in flight", incoming, self.settings.max_loaded_models,
                        self.settings.max_loaded_bytes)
        return freed

    def _release(self, slot: _Slot) -> None:
        slot.users -= 1
        slot.last_used = time.monotonic()
        if slot.users > 0 or self._closed:  # closed: `close()` has closed every model already
            return
        if slot.retired:
            self._close_later(slot)
            return
        name = slot.entry.name if slot.entry else None
        if slot.keep_alive <= 0 and name is not None:
            log.info("unloading model '%s' (keep_alive 0)", name)
            self._drop(name, slot)
            return
        slot.expires = slot.last_used + slot.keep_alive
        if self._over(0, 0):
            self._make_room()  # models loaded over the limits while all were busy
        if name is not None:
            self._check_later(name, slot)
        self._wake.set()

    def _check_later(self, name: str, slot: _Slot) -> None:
        """Unload `slot`, now idle, if its model left the store (or changed) while requests used it: a model
        removed while serving is unloaded after its requests even if none names it again."""
        check = asyncio.ensure_future(self._check_stored(name, slot))
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def _check_stored(self, name: str, slot: _Slot) -> None:
        try:
            entry: ModelEntry | None = await asyncio.to_thread(self.store.get, name)
        except StoreError:
            entry = None
        except Exception:  # an unreadable store: the next request says so
            log.exception("checking model '%s' in the store failed", name)
            return
        if self._slots.get(name) is slot and (entry is None or self._key(entry) != slot.key):
            log.info("unloading model '%s' (%s)", name, "removed from the store" if entry is None else "changed")
            self._drop(name, slot)

    def _drop(self, name: str, slot: _Slot) -> asyncio.Task | None:
        """Forget `slot` (a later request loads the model anew) and close it once it is not in use."""
        if self._slots.get(name) is slot:
            del self._slots[name]
        if slot.retired:
            return None
        slot.retired = True
        return self._close_later(slot) if slot.users == 0 else None

    def _close_later(self, slot: _Slot) -> asyncio.Task:
        closing = asyncio.ensure_future(self._close_slot(slot))
        self._closing[closing] = slot.entry.name if slot.entry else ""
        closing.add_done_callback(lambda task: self._closing.pop(task, None))
        return closing

    @staticmethod
    async def _close_slot(slot: _Slot) -> None:
        if not slot.task.done():
            slot.task.cancel()
        await asyncio.wait([slot.task])
        if slot.task.cancelled() or slot.task.exception() is not None:
            return  # a failed or cancelled load has nothing to close
        try:
            await slot.task.result().close()
        except Exception:
            log.exception("closing a model failed")

    def unload_expired(self) -> float | None:
        """Unload the idle models whose keep-alive ran out; the seconds until the next one expires, if any."""
        now = time.monotonic()
        wait: float | None = None
        for name, slot in list(self._slots.items()):
            if slot.users or slot.expires is None or slot.expires == FOREVER:
                continue
            if slot.expires <= now:
                log.info("unloading model '%s' (idle for its keep_alive)", name)
                self._drop(name, slot)
            else:
                wait = min(wait if wait is not None else FOREVER, slot.expires - now)
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
        return [name for name, slot in self._slots.items() if slot.ready]

    def running(self) -> list[LoadedModel]:
        """The loaded models (GET /api/ps, /health)."""
        now = time.monotonic()
        models = []
        for name, slot in self._slots.items():
            if not slot.ready or slot.entry is None:
                continue
            engine = slot.task.result()
            left = max(0.0, slot.keep_alive if slot.expires is None else slot.expires - now)
            models.append(LoadedModel(
                name=name, task=slot.entry.task, device=getattr(engine, "device", None) or "cpu", size=slot.size,
                expires_in=None if left == FOREVER else left, context_length=getattr(engine, "context_length", None),
                requests=slot.users, manifest=slot.entry.manifest,
            ))  # fmt: skip
        return models

    async def close(self) -> None:
        """Stop the reaper and close every loaded model (at shutdown); later requests get a 503."""
        self._closed = True
        for task in [self._reaper, *self._checks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in (self._reaper, *self._checks) if t is not None], return_exceptions=True)
        self._reaper = None
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            slot.retired = True
        await asyncio.gather(*(self._close_slot(s) for s in slots), *self._closing)
