"""`KvRows`: which request owns which row of the batched KV cache, and what finished rows still hold (pure).

Active requests always own rows 0..n-1 (so one call steps them all, with no idle row in between). A request
that finishes leaves its row's KV behind as a kept row (the tokens it holds), moved past the active ones. A
new request takes the kept row sharing the longest prefix of its prompt (a chat's previous turn, a shared
system prompt; at least `min_prefix` tokens) and starts after that prefix, as llama-server's cache_prompt
does; else an empty row; else the least recently used kept row. Moving a row is a swap of two rows' KV: the
caller carries out the swaps these methods return, (a, b, tokens), in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ortserve.server.engine.prompt_cache import DEFAULT_MIN_PREFIX, common_prefix

Swap = tuple[int, int, int]  # rows a and b, and how many positions of KV to exchange


@dataclass
class Kept:
    tokens: np.ndarray  # the tokens whose KV the row holds, in order
    used: int  # when it was last used (a counter)


class KvRows:
    def __init__(self, rows: int, min_prefix: int = DEFAULT_MIN_PREFIX):
        self.rows = rows
        self.min_prefix = max(1, min_prefix)  # a shorter match is a miss: it would spend a kept row on little
        self.active: list[Any] = []  # row i's request, for i < len(active)
        self.kept: dict[int, Kept] = {}  # row -> what it holds (rows >= len(active) only)
        self.clock = 0

    @property
    def free(self) -> int:
        return self.rows - len(self.active)

    def row_of(self, request: Any) -> int:
        return self.active.index(request)

    def acquire(self, request: Any, prompt: np.ndarray) -> tuple[int, list[Swap]]:
        """Give `request` the next row: (prompt tokens already in its KV, swaps to make). The prefix is at most
        len(prompt) - 1: the last prompt token is always run, for the logits of the first new token."""
        assert self.free > 0, "no free row"
        self.clock += 1
        target = len(self.active)
        best, best_prefix = None, self.min_prefix - 1
        for row, kept in self.kept.items():
            prefix = min(common_prefix(kept.tokens, prompt), len(prompt) - 1)
            if prefix > best_prefix:
                best, best_prefix = row, prefix
        if best is None:
            best_prefix = 0
        if best is None:
            empty = [r for r in range(target, self.rows) if r not in self.kept]
            if empty:
                best = min(empty)
            else:  # the least recently used kept row gives way
                best = min(self.kept, key=lambda r: self.kept[r].used)
            self.kept.pop(best, None)
        else:
            self.kept.pop(best)
        swaps = self._move(best, target, best_prefix)
        self.active.append(request)
        return best_prefix, swaps

    def release(self, request: Any, tokens: np.ndarray | None) -> list[Swap]:
        """`request` is done; its row keeps `tokens` (None or empty: nothing worth keeping). The last active row
        takes its place. Requests say how many tokens of KV their row holds in `.length`."""
        row = self.row_of(request)
        last = len(self.active) - 1
        self.clock += 1
        swaps: list[Swap] = []
        if row != last:
            moved = self.active[last]
            swaps.append((row, last, max(request.length, moved.length)))
            self.active[row] = moved
        self.active.pop()
        if tokens is not None and len(tokens):
            self.kept[last] = Kept(tokens, self.clock)
        else:
            self.kept.pop(last, None)
        return swaps

    def resize(self, rows: int, capacity: int) -> None:
        """The buffers now have `rows` rows of `capacity` tokens: kept rows that no longer fit are forgotten."""
        assert rows >= len(self.active), "an active row cannot be dropped"
        self.rows = rows
        for row in [r for r, k in self.kept.items() if r >= rows or len(k.tokens) > capacity]:
            del self.kept[row]

    def _move(self, source: int, target: int, prefix: int) -> list[Swap]:
        """Bring row `source` (holding `prefix` useful tokens) to `target` (the first non-active row)."""
        if source == target:
            return []
        displaced = self.kept.pop(target, None)
        if displaced is not None:
            self.kept[source] = displaced
        return [(source, target, max(prefix, 0 if displaced is None else len(displaced.tokens)))]
