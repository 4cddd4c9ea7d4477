"""`PromptCache`: a runner's finished og.Generators, kept so that a later prompt starting with the same tokens
skips their prefill (llama-server's `cache_prompt`, on the og.Generator path).

A chat's next turn repeats the previous turn's prompt and reply; requests sharing a system prompt or a tool
list start alike. When a request on the Generator path finishes, its generator (with its KV cache) is kept
here under the tokens whose KV it holds. A new request takes the kept generator whose tokens share the
longest prefix with its prompt (at least `min_prefix` tokens, and never the whole prompt: the last prompt
token is always read again, to get the logits of the first new token), rewinds it to that prefix and
appends only the rest. A kept generator is reused only by a request with the same search options (they
live in the og.GeneratorParams it was made with) whose prompt and budget fit in its KV (its `max_length`);
one that matches best but has no room left is dropped, and the request is told (`Outgrown`), so that the
generator replacing it gets room for the rest of the chat.

Bounded by the bytes of KV the kept generators hold; the least recently kept goes first. Pure: the
generators are opaque objects here (the runner's GeneratorRequest does the og calls).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MIN_PREFIX = 32  # shorter matches save less than a fresh generator costs to think about


@dataclass(frozen=True)
class CachedPrompt:
    """A finished request's generator and what it holds."""

    generator: Any  # og.Generator, its KV valid for `tokens`
    tokens: np.ndarray  # int32 token ids whose KV the generator holds, in order
    options: tuple  # the search options it was made with, but max_length (sorted (name, value) pairs)
    max_length: int  # its KV's room in tokens
    nbytes: int  # the memory its KV holds (what the budget counts)


@dataclass(frozen=True)
class PromptHit:
    generator: Any
    prefix: int  # tokens of the prompt already in the generator's KV (it is rewound to this length)
    max_length: int  # the generator's room in tokens


@dataclass(frozen=True)
class Outgrown:
    """The generator sharing the longest prefix had no room for this request (it was dropped)."""

    prefix: int


def options_key(options: dict[str, Any]) -> tuple:
    """The search options a reused generator must share, as a comparable key (max_length is checked apart)."""
    return tuple(sorted((k, v) for k, v in options.items() if k != "max_length"))


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PromptCache:
    """Finished generators by their tokens; `take` the best one for a prompt, `keep` one that finished."""

    def __init__(self, max_bytes: int, min_prefix: int = DEFAULT_MIN_PREFIX):
        self.max_bytes = max_bytes
        self.min_prefix = max(1, min_prefix)
        self._entries: OrderedDict[int, CachedPrompt] = OrderedDict()  # least recently kept first
        self._next = 0
        self.nbytes = 0
        self.hits = self.misses = 0
        self.reused_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, prompt: np.ndarray, options: dict[str, Any]) -> PromptHit | Outgrown | None:
        """Remove and return the kept generator sharing the longest usable prefix with `prompt`, if any.

        `options`: the request's search options; its max_length (prompt + budget) must fit the generator's,
        else that generator is dropped and the answer is `Outgrown`. The caller rewinds a hit's generator to
        `prefix` and appends the rest of the prompt.
        """
        key, need = options_key(options), int(options["max_length"])
        best, best_prefix = None, -1
        for slot, entry in self._entries.items():
            if entry.options != key:
                continue
            prefix = min(common_prefix(entry.tokens, prompt), len(prompt) - 1)
            if prefix >= best_prefix:  # ties: the most recently kept (later in the order)
                best, best_prefix = slot, prefix
        if best is None or best_prefix < self.min_prefix:
            self.misses += 1
            return None
        entry = self._entries.pop(best)
        self.nbytes -= entry.nbytes
        if entry.max_length < need:
            self.misses += 1
            return Outgrown(best_prefix)
        self.hits += 1
        self.reused_tokens += best_prefix
        return PromptHit(entry.generator, best_prefix, entry.max_length)

    def keep(self, entry: CachedPrompt) -> None:
        """Keep a finished request's generator; the least recently kept ones go while over the budget."""
        if entry.nbytes > self.max_bytes or len(entry.tokens) < self.min_prefix:
            return
        self._entries[self._next] = entry
        self._next += 1
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def stats(self) -> dict[str, int]:
        return {
            "kept": len(self._entries),
            "bytes": self.nbytes,
            "hits": self.hits,
            "misses": self.misses,
            "reused_tokens": self.reused_tokens,
        }
