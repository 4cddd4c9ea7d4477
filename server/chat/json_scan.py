"""An incremental scanner for the JSON object of one tool call (pure; no model).

Models write a call as a JSON object, usually `{"name": "f", "arguments": {...}}`.
The scanner reads that object as its text arrives, one piece at a time, and
reports what a streaming response needs: the name as soon as its string closes,
and where the arguments value starts and (once known) ends, so that argument
text can be forwarded while it is still being generated.
"""

from __future__ import annotations

import json

ARGUMENT_KEYS = ("arguments", "parameters")  # Llama 3.x says "parameters"


class CallScanner:
    """Feed text until `done`; `text` is the object's text so far (starting at its "{")."""

    def __init__(self) -> None:
        self.text = ""
        self.done = False
        self.name: str | None = None
        self.args_start: int | None = None  # where the arguments value starts in `text`
        self.args_end: int | None = None  # where it ends, once it has
        self.args_kind: str | None = None  # "container" (object/array), "string" or "scalar"
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._string_role: str | None = None  # "key" or "value" for a string at depth 1
        self._expect = "key"  # at depth 1: key, colon, value, in_value, comma
        self._key: str | None = None
        self._mark = 0  # start of the current key or value at depth 1

    def feed(self, piece: str) -> int:
        """Scan `piece`; return how many of its characters belong to the object (the rest follows it)."""
        for used, char in enumerate(piece):
            if self.done:
                return used
            self.text += char
            self._step(len(self.text) - 1, char)
        return len(piece)

    @property
    def streamable_args_end(self) -> int | None:
        """How far the arguments text is known: its end, or (for an object still open) what is there so far."""
        if self.args_end is not None:
            return self.args_end
        if self.args_start is not None and self.args_kind == "container":
            return len(self.text)
        return None

    def arguments(self) -> str | None:
        """The arguments as OpenAI sends them (a JSON string): the value's text, or the content of a string value."""
        if self.args_start is None:
            return None
        raw = self.text[self.args_start : self.args_end] if self.args_end is not None else self.text[self.args_start :]
        if self.args_kind == "string" and self.args_end is not None:
            try:
                return json.loads(raw)
            except ValueError:
                return raw
        return raw.strip()

    # ---- the state machine ------------------------------------------------
    def _step(self, i: int, c: str) -> None:
        if self._in_string:
            if self._escape:
                self._escape = False
            elif c == "\\":
                self._escape = True
            elif c == '"':
                self._in_string = False
                if self._depth == 1 and self._string_role == "key":
                    key = _loads(self.text[self._mark : i + 1])
                    self._key = key if isinstance(key, str) else None
                    self._expect = "colon"
                elif self._depth == 1 and self._string_role == "value":
                    self._end_value(i + 1)
            return
        if c == '"':
            self._in_string = True
            self._string_role = None
            if self._depth == 1 and self._expect == "key":
                self._string_role, self._mark = "key", i
            elif self._depth == 1 and self._expect == "value":
                self._string_role = "value"
                self._start_value(i, "string")
        elif c in "{[":
            if self._depth == 1 and self._expect == "value":
                self._start_value(i, "container")
            self._depth += 1
        elif c in "}]":
            if self._depth == 1 and self._expect == "in_value":  # a scalar ends at the object's end
                self._end_value(i)
            self._depth -= 1
            if self._depth == 0:
                self.done = True
            elif self._depth == 1 and self._expect == "in_value":
                self._end_value(i + 1)
        elif self._depth == 1:
            if c == ":" and self._expect == "colon":
                self._expect = "value"
            elif c == ",":
                if self._expect == "in_value":
                    self._end_value(i)
                self._expect = "key"
            elif not c.isspace() and self._expect == "value":
                self._start_value(i, "scalar")

    def _start_value(self, i: int, kind: str) -> None:
        self._mark, self._expect = i, "in_value"
        if self._key in ARGUMENT_KEYS and self.args_start is None:
            self.args_start, self.args_kind = i, kind

    def _end_value(self, end: int) -> None:
        self._expect = "comma"
        if self._key == "name" and self.name is None:
            value = _loads(self.text[self._mark : end])
            self.name = value if isinstance(value, str) and value else None
        elif self._key in ARGUMENT_KEYS and self.args_start == self._mark:
            self.args_end = end


def _loads(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None
