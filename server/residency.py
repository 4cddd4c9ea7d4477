"""When loaded models are unloaded: keep-alive deadlines and the least-recently-used choice under the limits.

Pure policy, plain data in and decisions out: no asyncio, no processes and no clock of its own (every call
is given `now`). The registry (server/registry.py) keeps one `Usage` per loaded model, tells it when a
request starts and ends, and unloads what the functions here choose; the unit tests drive them with plain
objects and made-up times.

Keep-alive (as Ollama): once its last request is done, a loaded model stays loaded for its keep-alive
time, then it is unloaded; 0 unloads it right after the request, `FOREVER` (a negative keep_alive) never
for idleness. The time comes from the request's `keep_alive`, else the name's settings, else the server's
(`choose_keep_alive`). Several names (`cp` copies, `create` FROM, aliases) that resolve to the same weights
share one loaded model: its keep-alive is the one of the *last request* to start on it, whichever name that
request sent (as in Ollama, where every request resets the model's timer). Not the longest ever asked: a
request that says keep_alive 0 (or "8s") means it, and the next request can always ask for more.

Limits: at most `max_models` models, `max_bytes` of weights and `max_vram` of GPU memory (each model's
estimate, server/gpu_memory.py) loaded at once (0: no limit). Loading one more first unloads the least
recently used idle models until it fits (`to_unload`). A model with requests in
flight is never chosen: when every loaded model is busy the newcomer is loaded over the limits, and the
limits are restored (`to_unload` with nothing incoming) as soon as models go idle.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from ortserve.core.durations import FOREVER  # a keep-alive (and a deadline) that never comes: math.inf

K = TypeVar("K", bound=Hashable)


def choose_keep_alive(requested: float | None, configured: float | None, server: float) -> float:
    """The seconds a model stays loaded after a request: the request's, else its name's settings', else the
    server's (each already parsed; negative ones are FOREVER)."""
    for seconds in (requested, configured):
        if seconds is not None:
            return seconds
    return server


@dataclass(eq=False)
class Usage:
    """How one loaded model is used: what the keep-alive and eviction decisions read."""

    size: int = 0  # estimated bytes (its weights on disk)
    vram: int = 0  # estimated bytes of GPU memory (0: not on a GPU)
    users: int = 0  # requests holding it now (a load in progress counts its waiting requests)
    keep_alive: float = 0.0  # seconds it stays after its last request (FOREVER: no deadline)
    last_used: float = 0.0  # when a request last started or ended (the LRU order)
    expires: float | None = None  # the deadline while idle; None while in use

    @property
    def idle(self) -> bool:
        return self.users == 0

    def acquire(self, now: float, keep_alive: float) -> None:
        """A request starts using the model; its keep-alive is the one that counts from now on."""
        self.users += 1
        self.keep_alive, self.last_used, self.expires = keep_alive, now, None

    def release(self, now: float) -> bool:
        """A request is done. True when the model should be unloaded now (its last request asked keep-alive 0);
        otherwise, once idle, its deadline is set."""
        self.users -= 1
        self.last_used = now
        if self.users > 0:
            return False
        if self.keep_alive <= 0:
            return True
        self.expires = now + self.keep_alive  # inf + now is inf: FOREVER stays FOREVER
        return False

    def expires_in(self, now: float) -> float | None:
        """Seconds of keep-alive left (the full time while in use); None: kept forever."""
        left = max(0.0, self.keep_alive if self.expires is None else self.expires - now)
        return None if left == FOREVER else left


@dataclass(frozen=True)
class Limits:
    max_models: int = 0  # 0: no limit
    max_bytes: int = 0  # 0: no limit
    max_vram: int = 0  # bytes of GPU memory; 0: no limit

    def exceeded(
        self, loaded: Iterable[Usage], extra_models: int = 0, extra_bytes: int = 0, extra_vram: int = 0
    ) -> bool:
        """Whether `loaded`, plus `extra_models` models of `extra_bytes` (`extra_vram` on the GPU) in all, break
        a limit."""
        usages = list(loaded)
        models = len(usages) + extra_models
        size = sum(u.size for u in usages) + extra_bytes
        vram = sum(u.vram for u in usages) + extra_vram
        return bool(
            (self.max_models and models > self.max_models)
            or (self.max_bytes and size > self.max_bytes)
            or (self.max_vram and vram > self.max_vram)
        )


def to_unload(
    loaded: Mapping[K, Usage], limits: Limits, incoming_bytes: int | None = None, incoming_vram: int = 0
) -> list[K]:
    """The idle models to unload, least recently used first, so that the limits hold with one incoming model of
    `incoming_bytes` and `incoming_vram` (None: nothing incoming, e.g. models loaded over the limits while all
    were busy). Busy models are never chosen, so the limits may still be exceeded afterwards
    (`Limits.exceeded` says)."""
    extra = (0, 0, 0) if incoming_bytes is None else (1, incoming_bytes, incoming_vram)
    off_gpu = replace(limits, max_vram=0)  # the limits that unloading a model off the GPU can help
    remaining = dict(loaded)
    chosen: list[K] = []
    for key, usage in sorted(((k, u) for k, u in loaded.items() if u.idle), key=lambda item: item[1].last_used):
        if not limits.exceeded(remaining.values(), *extra):
            break
        if not usage.vram and not off_gpu.exceeded(remaining.values(), *extra):
            continue  # only the GPU budget is broken: a model on the CPU frees none of it
        del remaining[key]
        chosen.append(key)
    return chosen


def expired(loaded: Mapping[K, Usage], now: float) -> tuple[list[K], float | None]:
    """The idle models whose keep-alive ran out by `now`, and the seconds until the next deadline (None: none)."""
    due: list[K] = []
    wait: float | None = None
    for key, usage in loaded.items():
        if not usage.idle or usage.expires is None or usage.expires == FOREVER:
            continue
        if usage.expires <= now:
            due.append(key)
        else:
            wait = min(wait if wait is not None else FOREVER, usage.expires - now)
    return due, wait
