"""Stop strings over a stream of text pieces (pure; no model, no tokenizer).

A stop string can be split across tokens, so the matcher holds back the tail of
the text that could still become the start of a stop string, and releases it
once it cannot. Text is never retracted: whatever `feed` returned is final.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    """Feed decoded pieces; get back the text that is safe to emit and whether a stop string matched.

    >>> m = StopMatcher(["\\n\\n"])
    >>> m.feed("Hello\\n"), m.feed("\\nWorld")
    (('Hello', False), ('', True))
    """

    def __init__(self, stops: Iterable[str] = ()):
        self.stops = tuple(s for s in dict.fromkeys(stops) if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text to emit now, stop matched). After a match, the rest of the stream is ignored."""
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buffer = self._held + text
        # the held tail never contains a whole stop string, so a match ends in `text`
        # and the earliest one is the one to honour
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            self.stopped = True
            return buffer[: min(hits)], True
        keep = self._partial_tail(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """The held-back text, at the end of the stream (EOS or budget) where no stop can complete."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_tail(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of some stop string."""
        for k in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0
