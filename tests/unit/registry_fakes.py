"""Fakes and helpers for the registry's unit tests (test_registry_lru, test_registry_shared): engines that
only record being loaded and closed, a loader that counts loads, a settable clock, and /api/ps as JSON.

The engines are fakes (loading real models is tests/e2e's work); the store, the registry and the residency
policy under test are real.
"""

from __future__ import annotations

import asyncio
import time

from ortserve.server.registry import Registry
from ortserve.server.serving.models import running_model
from ortserve.server.settings import ServerSettings


def ps(registry: Registry) -> list[dict]:
    """What GET /api/ps answers for the registry's loaded models."""
    return [running_model(m).model_dump() for m in registry.running()]


class FakeEngine:
    device = "cpu"
    context_length = 64

    def __init__(self, name: str):
        self.name, self.closed = name, False

    async def close(self) -> None:
        self.closed = True


class Loads:
    """A loader that records what it loaded (and with which context and device); `gate` holds loads until set."""

    def __init__(self):
        self.engines: list[FakeEngine] = []
        self.calls: list[tuple[str, int | None, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, entry, *, num_ctx, device):
        self.calls.append((entry.name, num_ctx, device))
        await self.gate.wait()
        engine = FakeEngine(entry.name)
        self.engines.append(engine)
        return engine

    def of(self, name: str) -> list[FakeEngine]:
        return [e for e in self.engines if e.name == name]


def slow_closing_loader(order: list[str], closing: asyncio.Event):
    """A loader that records "load NAME" / "closed NAME" in `order`; each close waits for `closing`."""

    class SlowClose(FakeEngine):
        async def close(self) -> None:
            await closing.wait()
            order.append(f"closed {self.name}")

    async def loader(entry, *, num_ctx, device):
        order.append(f"load {entry.name}")
        return SlowClose(entry.name)

    return loader


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(store, loads, **settings) -> Registry:
    return Registry(
        ServerSettings(models_dir=store.models_dir, configs_dir=store.models_dir.parent / "configs", **settings),
        store,
        loaders={"chat": loads},
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def use(registry: Registry, name: str, keep_alive=None) -> None:
    lease = await registry.acquire(name, keep_alive=keep_alive)
    lease.release()
    await settle()


async def wait_for(condition, what: str, timeout: float = 10) -> None:
    """Poll `condition` (real time: not for tests that freeze the clock) until true or the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        await asyncio.sleep(0.01)
