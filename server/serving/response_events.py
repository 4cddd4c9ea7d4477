"""The output of one response, built from the chat pipeline's deltas, and the named stream events that build it.

Chat's deltas (reasoning_content, content, tool calls' starts and argument fragments) become output items in
order: a `reasoning` item, `message` items with one `output_text` part, `function_call` items. Each item is
announced (response.output_item.added, its part's response.content_part.added), grows by deltas, and is closed
(`.done` events, response.output_item.done) when the next one starts or the reply ends. Text made only of blanks
between tool calls opens no message. Every event carries the response's next `sequence_number`.
"""

from __future__ import annotations

import uuid
from typing import Any

from ortserve.server.protocol.chat import DeltaMessage


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputBuilder:
    def __init__(self, summary: bool = False):
        self.summary = summary  # also give the reasoning as the reasoning item's summary
        self.items: list[dict[str, Any]] = []
        self.sequence = 0
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}  # chat's tool-call index -> its function_call item
        self._blank = ""  # blank content not shown yet (it opens a message only if more text follows)

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def feed(self, delta: DeltaMessage) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if delta.reasoning_content:
            out += self._text("reasoning", delta.reasoning_content)
        if delta.content:
            out += self._content(delta.content)
        for call in delta.tool_calls or ():
            if call.id is not None:
                out += self._open_item(
                    {
                        "id": item_id("fc"),
                        "type": "function_call",
                        "status": "in_progress",
                        "call_id": call.id,
                        "name": call.function.name or "",
                        "arguments": "",
                    }
                )
                self._calls[call.index] = self._open  # type: ignore[assignment]
            item = self._calls.get(call.index)
            if item is not None and call.function.arguments:
                item["arguments"] += call.function.arguments
                out.append(self._item_event("response.function_call_arguments.delta", delta=call.function.arguments))
        return out

    def close(self, incomplete: bool = False) -> list[dict[str, Any]]:
        """The end of the reply: the open item is closed ("incomplete" when the reply was cut short); a reply
        with no item at all gets an (empty) message."""
        if not self.items:
            self._blank, blank = "", self._blank
            out = self._text("message", blank)
        else:
            out = []
        return out + self._close_open("incomplete" if incomplete else "completed")

    # ---- items ----------------------------------------------------------------------------------------------
    def _content(self, text: str) -> list[dict[str, Any]]:
        if not (self._open and self._open["type"] == "message") and not (self._blank + text).strip():
            self._blank += text
            return []
        text, self._blank = self._blank + text, ""
        return self._text("message", text)

    def _text(self, kind: str, text: str) -> list[dict[str, Any]]:
        """Text for a message or a reasoning item: the open one of that kind grows, else a new one opens."""
        out: list[dict[str, Any]] = []
        if not (self._open and self._open["type"] == kind):
            if kind == "message":
                item: dict[str, Any] = {
                    "id": item_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "status": "in_progress",
                    "content": [],
                }
                part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            else:
                item = {"id": item_id("rs"), "type": "reasoning", "status": "in_progress", "summary": [], "content": []}
                part = {"type": "reasoning_text", "text": ""}
            out += self._open_item(item)
            out.append(self._item_event("response.content_part.added", content_index=0, part=dict(part)))
            item["content"].append(part)
        part = self._open["content"][0]  # type: ignore[index]
        if text:
            part["text"] += text
            name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
            extra: dict[str, Any] = {"logprobs": []} if kind == "message" else {}
            out.append(self._item_event(name, content_index=0, delta=text, **extra))
        return out

    def _open_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close_open("completed")
        self.items.append(item)
        self._open = item
        out.append(self.event("response.output_item.added", output_index=len(self.items) - 1, item=_copy(item)))
        return out

    def _close_open(self, status: str) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        out: list[dict[str, Any]] = []
        if item["type"] == "message":
            part = item["content"][0]
            out.append(self._item_event("response.output_text.done", content_index=0, text=part["text"], logprobs=[]))
            out.append(self._item_event("response.content_part.done", content_index=0, part=dict(part)))
        elif item["type"] == "reasoning":
            part = item["content"][0]
            out.append(self._item_event("response.reasoning_text.done", content_index=0, text=part["text"]))
            out.append(self._item_event("response.content_part.done", content_index=0, part=dict(part)))
            if self.summary:
                out += self._summary(part["text"])
        else:
            out.append(
                self._item_event(
                    "response.function_call_arguments.done", arguments=item["arguments"], name=item["name"]
                )
            )
        item["status"] = status
        out.append(self.event("response.output_item.done", output_index=len(self.items) - 1, item=_copy(item)))
        self._open = None
        return out

    def _summary(self, text: str) -> list[dict[str, Any]]:
        summary = {"type": "summary_text", "text": text}
        self._open["summary"].append(summary)  # type: ignore[index]
        added = {"type": "summary_text", "text": ""}
        return [
            self._item_event("response.reasoning_summary_part.added", summary_index=0, part=added),
            self._item_event("response.reasoning_summary_text.delta", summary_index=0, delta=text),
            self._item_event("response.reasoning_summary_text.done", summary_index=0, text=text),
            self._item_event("response.reasoning_summary_part.done", summary_index=0, part=dict(summary)),
        ]

    def _item_event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """An event about the open item (its id and place in the output)."""
        assert self._open is not None
        return self.event(kind, item_id=self._open["id"], output_index=len(self.items) - 1, **fields)


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """An item as it is now (events are encoded later: later deltas must not change it)."""
    copied = dict(item)
    for key in ("content", "summary"):
        if key in copied:
            copied[key] = [dict(part) for part in copied[key]]
    return copied


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output as chat messages (what a later `previous_response_id` continues): its text as an
    assistant message, its function calls as that message's tool calls; reasoning is left out, as chat
    templates leave out earlier turns' reasoning."""
    messages: list[dict[str, Any]] = []
    for item in output:
        if item["type"] == "message":
            text = "".join(part["text"] for part in item["content"])
            messages.append({"role": "assistant", "content": text})
        elif item["type"] == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return messages
