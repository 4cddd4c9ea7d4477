"""Which models exist, their aliases, and loading them on first use.

The store is re-read on every lookup, so names added, copied, re-configured or
removed while the server runs are seen at once. A model is loaded on the first
request that needs it; concurrent first requests share one load (one task per
model). Each task has its loader (`LOADERS`: chat models load a `TextGenerator`,
embedding models an `Embedder`), and this registry owns every loaded model. A
loaded model is used through a `Lease`, so one whose weights or serving settings
changed in the store is replaced, and closed once the requests still using it are
done. The `Registry` lives on the app, never in a module global.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, cast

from server.engine.base import TextGenerator
from server.engine.embedder import Embedder
from server.errors import APIError, BackendError, InvalidRequestError, ModelNotFoundError
from server.protocol.models import ModelCard
from server.settings import ServerSettings
from server.store import ModelEntry, ModelStore, StoreError

log = logging.getLogger(__name__)

Engine = TextGenerator | Embedder
Loader = Callable[..., Awaitable[Engine]]  # (entry, *, num_ctx, device) -> a loaded model

# task -> (module, function) of its loader, imported on first load: the engines are heavy
LOADERS: dict[str, tuple[str, str]] = {
    "chat": ("server.engine", "load_generator"),
    "embedding": ("server.engine.embeddings", "load_embedder"),
}


def _default_loader(task: str) -> Loader:
    if task not in LOADERS:
        raise InvalidRequestError(f"Models for the task '{task}' cannot be served yet.", param="model")
    module, function = LOADERS[task]
    return getattr(importlib.import_module(module), function)


@dataclass(eq=False)
class _Slot:
    """One load of one model: the task that loads it, and who is using the result."""

    key: tuple
    task: asyncio.Task[Engine]
    users: int = 0
    retired: bool = False


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
        self._closing: set[asyncio.Task] = set()

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
        """The store entry for a name or alias, or ModelNotFoundError (404)."""
        try:
            return await asyncio.to_thread(self.store.get, model)
        except StoreError:
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

    async def _load(self, entry: ModelEntry) -> Engine:
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

    async def acquire(self, model: str, *, task: str = "chat") -> Lease:
        """The loaded model for `model` (which must be a `task` model), loading it (once, shared) if needed."""
        entry = await self.resolve(model)
        if entry.task != task:
            raise InvalidRequestError(
                f"The model '{model}' is a {entry.task} model and cannot be used for this endpoint.",
                param="model",
            )
        key = self._key(entry)
        slot = self._slots.get(entry.name)
        if slot is not None and slot.key != key:
            self._retire(slot)
            slot = None
        if slot is None:
            slot = _Slot(key, asyncio.ensure_future(self._load(entry)))
            self._slots[entry.name] = slot
            self._forget_failed(entry.name, slot)
        slot.users += 1
        try:
            # shield: a request that goes away does not cancel a load others are waiting on
            engine = await asyncio.shield(slot.task)
        except BaseException:
            self._release(slot)
            raise
        return Lease(entry, engine, slot, self)

    def _release(self, slot: _Slot) -> None:
        slot.users -= 1
        if slot.retired and slot.users == 0:
            self._close_later(slot)

    def _retire(self, slot: _Slot) -> None:
        slot.retired = True
        if slot.users == 0:
            self._close_later(slot)

    def _close_later(self, slot: _Slot) -> None:
        closing = asyncio.ensure_future(self._close_slot(slot))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

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

    def loaded(self) -> list[str]:
        def ok(task: asyncio.Task) -> bool:
            return task.done() and not task.cancelled() and task.exception() is None

        return [name for name, slot in self._slots.items() if ok(slot.task)]

    async def close(self) -> None:
        """Close every loaded model (at shutdown)."""
        slots, self._slots = list(self._slots.values()), {}
        await asyncio.gather(*(self._close_slot(s) for s in slots), *self._closing)
