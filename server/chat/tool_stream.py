"""Reading tool calls out of a model's text as it is generated (pure; no model).

`ToolCallStream(parser).feed(piece)` returns events: `Content` for text outside
the calls, `CallStarted` once a call's name is known (with its new id), then
`ArgumentsDelta` fragments of its arguments (a JSON text). Joined, the fragments
are exactly the arguments text the model wrote. Text is never retracted: what
might still turn into a marker is held back until it cannot.

`parse_tool_calls(parser, text)` runs the same stream over a whole reply.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field

from ortserve.server.chat.json_scan import ARGUMENT_KEYS, CallScanner
from ortserve.server.chat.tool_parsers import ToolParser

_GLUE_CHARS = "[],;"


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStarted:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


Event = Content | CallStarted | ArgumentsDelta


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class ParsedReply:
    content: str | None
    tool_calls: list[ParsedCall] = field(default_factory=list)


class ToolCallStream:
    """`tool_names`: for formats without a marker (a reply that is a JSON object), only these count as calls.
    `max_calls`: calls beyond it are dropped (parallel_tool_calls=false)."""

    def __init__(self, parser: type[ToolParser], tool_names: Collection[str] = (), max_calls: int | None = None):
        self.parser = parser
        self.tool_names = set(tool_names)
        self.max_calls = max_calls
        self._markers = parser.markers
        self._pieces = parser.glue()
        self._mode = "start" if parser.bare_json else "content"
        self._buf = ""
        self._held_glue = ""  # text consumed as glue; given back as content if no call follows
        self._region_calls = 0  # calls since the last marker
        self._calls = 0
        self._scanner: CallScanner | None = None
        self._started = False  # the current object's CallStarted was sent
        self._skip = False  # the current object is beyond max_calls
        self._sent = 0  # argument characters of the current object already sent
        self._bare = False  # the current object came without a marker (only known tools count)

    # ---- public ---------------------------------------------------------------
    def feed(self, piece: str) -> list[Event]:
        self._buf += piece
        events: list[Event] = []
        while self._buf:
            before = (self._mode, len(self._buf))
            getattr(self, f"_{self._mode}")(events)
            if (self._mode, len(self._buf)) == before:
                break  # waiting for more text
        return _merge(events)

    def finish(self) -> list[Event]:
        """The end of the reply: release what was held back, close an unfinished call."""
        events: list[Event] = []
        if self._mode == "object":
            self._close_object(events, complete=False)
        elif self._mode == "glue" and not self._region_calls:
            events.append(Content(self._held_glue + self._buf))
        elif self._mode in ("content", "start"):
            events.append(Content(self._buf))
        self._buf = self._held_glue = ""
        self._mode = "content"
        return _merge(events)

    @property
    def calls(self) -> int:
        return self._calls

    # ---- modes (each consumes what it can of self._buf, or nothing while it waits) ----
    def _start(self, events: list[Event]) -> None:
        """Formats without a marker: a reply that starts with "{" may be a call."""
        stripped = self._buf.lstrip()
        if not stripped:
            return
        if stripped.startswith("{"):
            self._held_glue, self._buf = self._buf[: len(self._buf) - len(stripped)], stripped
            self._begin_object(bare=True)
        else:
            self._mode = "content"

    def _content(self, events: list[Event]) -> None:
        buf = self._buf
        hits = [(i, m) for m in self._markers if (i := buf.find(m)) >= 0]
        if hits:
            at, marker = min(hits)
            cut = len(buf[:at].rstrip())  # blanks before the calls are not content
            events.append(Content(buf[:cut]))
            self._held_glue, self._buf = buf[cut : at + len(marker)], buf[at + len(marker) :]
            self._mode, self._region_calls = "glue", 0
            return
        keep = max((k for m in self._markers for k in range(1, len(m)) if buf.endswith(m[:k])), default=0)
        keep = len(buf) - len(buf[: len(buf) - keep].rstrip())  # and the blanks before: a marker may follow
        events.append(Content(buf[: len(buf) - keep]))
        self._buf = buf[len(buf) - keep :]

    def _glue(self, events: list[Event]) -> None:
        buf = self._buf
        if buf.startswith("{"):
            self._begin_object(bare=False)
            return
        taken = buf[0] if buf[0].isspace() or buf[0] in _GLUE_CHARS else None
        taken = taken or next((piece for piece in self._pieces if buf.startswith(piece)), None)
        if taken:
            self._held_glue, self._buf = self._held_glue + taken, buf[len(taken) :]
            return
        if any(piece.startswith(buf) for piece in self._pieces):
            return  # a marker may be arriving
        if not self._region_calls:  # a marker with no call after it was only text
            events.append(Content(self._held_glue))
        self._held_glue, self._mode = "", "content"

    def _object(self, events: list[Event]) -> None:
        assert self._scanner is not None
        used = self._scanner.feed(self._buf)
        self._buf = self._buf[used:]
        if self._scanner.done:
            self._close_object(events, complete=True)
        else:
            self._advance(events, self._scanner)

    # ---- one call object -------------------------------------------------------
    def _begin_object(self, *, bare: bool) -> None:
        self._scanner = CallScanner()
        self._mode, self._bare, self._started, self._sent = "object", bare, False, 0
        self._skip = self.max_calls is not None and self._calls >= self.max_calls

    def _known(self, name: str) -> bool:
        return not (self._bare and self.tool_names and name not in self.tool_names)

    def _advance(self, events: list[Event], scanner: CallScanner) -> None:
        """Send the name once known, then whatever arguments text is certain."""
        if self._skip:
            return
        if not self._started and scanner.name is not None and self._known(scanner.name):
            self._started = True
            events.append(CallStarted(self._calls, self.parser.new_call_id(), scanner.name))
        end = scanner.streamable_args_end
        start = scanner.args_start
        if self._started and scanner.args_kind == "container" and end is not None and start is not None:
            text = scanner.text[start + self._sent : end]
            if text:
                self._sent += len(text)
                events.append(ArgumentsDelta(self._calls, text))

    def _close_object(self, events: list[Event], *, complete: bool) -> None:
        scanner, self._scanner = self._scanner, None
        assert scanner is not None
        self._advance(events, scanner)
        if self._skip:  # beyond max_calls: dropped
            self._held_glue, self._mode = "", "glue"
            return
        if self._started:
            if scanner.args_kind != "container":
                arguments = scanner.arguments()
                events.append(ArgumentsDelta(self._calls, "{}" if arguments is None else arguments))
        elif not (complete and self._parse_whole(events, scanner.text)):
            events.append(Content(self._held_glue + scanner.text))  # not a call after all
            self._held_glue, self._mode = "", "content"
            return
        self._calls += 1
        self._region_calls += 1
        self._held_glue, self._mode = "", "glue"

    def _parse_whole(self, events: list[Event], text: str) -> bool:
        """A complete object whose name came late or nested ({"function": {"name": ...}})."""
        try:
            value = json.loads(text)
        except ValueError:
            return False
        if isinstance(value.get("function"), dict):
            value = value["function"]
        name = value.get("name")
        if not isinstance(name, str) or not name or not self._known(name):
            return False
        arguments: object = next((value[k] for k in ARGUMENT_KEYS if k in value), {})
        events.append(CallStarted(self._calls, self.parser.new_call_id(), name))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        events.append(ArgumentsDelta(self._calls, text))
        return True


def _merge(events: list[Event]) -> list[Event]:
    """Adjacent content pieces and adjacent argument fragments of one call, joined."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, Content) and isinstance(last, Content):
            out[-1] = Content(last.text + event.text)
        elif isinstance(event, ArgumentsDelta) and isinstance(last, ArgumentsDelta) and last.index == event.index:
            out[-1] = ArgumentsDelta(event.index, last.text + event.text)
        elif not (isinstance(event, Content) and not event.text):
            out.append(event)
    return out


def parse_tool_calls(
    parser: type[ToolParser], text: str, tool_names: Collection[str] = (), max_calls: int | None = None
) -> ParsedReply:
    """A whole reply: its content (None when it only calls tools) and its calls."""
    stream = ToolCallStream(parser, tool_names, max_calls)
    content: list[str] = []
    calls: list[ParsedCall] = []
    for event in stream.feed(text) + stream.finish():
        if isinstance(event, Content):
            content.append(event.text)
        elif isinstance(event, CallStarted):
            calls.append(ParsedCall(event.id, event.name))
        else:
            calls[event.index].arguments += event.text
    joined = "".join(content)
    return ParsedReply(None if calls and not joined.strip() else joined, calls)
