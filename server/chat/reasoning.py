"""Reasoning models: finding their markers in a chat template, and splitting a reply into reasoning and answer.

Qwen3, the DeepSeek-R1 distills, Phi-4-mini-reasoning and others write their reasoning between
`<think>` and `</think>` (other families use other markers: `REASONING_MARKERS`), then the answer.
`ReasoningStream(markers, inside).feed(piece)` returns `Reasoning` and `Answer` pieces as the text
arrives, whatever the token boundaries: a piece that may still become a marker is held back until it
cannot. `inside`: the prompt itself opened the reasoning (a template that ends with `<think>`), so the
reply starts in it; `prompt_opens_reasoning(prompt_text, markers)` says so from the rendered prompt.
Blanks between the reasoning and the answer belong to neither. Pure: no model, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReasoningMarkers:
    open: str
    close: str
    # the template takes `enable_thinking` (Qwen3's switch); without it reasoning cannot be turned off
    switch: str | None = None


# (open, close) of each family, tried in order: the first pair a template mentions is its markers
REASONING_MARKERS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),  # Qwen3, QwQ, DeepSeek-R1 and its distills, Phi-4-reasoning, SmolLM3
    ("◁think▷", "◁/think▷"),  # Kimi
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
)
THINKING_SWITCH = "enable_thinking"


def find_reasoning_markers(template: str | None) -> ReasoningMarkers | None:
    """The markers a chat template writes or reads (None: not a reasoning model, as far as the template says)."""
    if not template:
        return None
    for open_marker, close_marker in REASONING_MARKERS:
        if open_marker in template and close_marker in template:
            switch = THINKING_SWITCH if THINKING_SWITCH in template else None
            return ReasoningMarkers(open_marker, close_marker, switch)
    return None


def prompt_opens_reasoning(prompt_text: str | None, markers: ReasoningMarkers) -> bool:
    """Whether the rendered prompt ends inside an open reasoning block (the model continues it)."""
    if not prompt_text:
        return False
    return prompt_text.rfind(markers.open) > prompt_text.rfind(markers.close)


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class Answer:
    text: str


Piece = Reasoning | Answer


class ReasoningStream:
    """Splits one reply. Modes: "start" (may open a reasoning block), "reasoning", "answer_start" (blanks
    after the block), "answer"."""

    def __init__(self, markers: ReasoningMarkers, inside: bool = False):
        self.markers = markers
        self._mode = "reasoning_start" if inside else "start"
        self._buf = ""
        self.reasoned = inside  # a reasoning block was opened
        self.closed = False  # ... and closed

    def feed(self, piece: str) -> list[Piece]:
        self._buf += piece
        out: list[Piece] = []
        while self._buf:
            before = (self._mode, len(self._buf))
            getattr(self, f"_{self._mode}")(out)
            if (self._mode, len(self._buf)) == before:
                break  # waiting for more text
        return _merge(out)

    def finish(self) -> list[Piece]:
        """The end of the reply: what was held back is what it is now known to be."""
        out: list[Piece] = []
        if self._mode == "reasoning" and self._buf:
            out.append(Reasoning(self._buf))
        elif self._mode in ("start", "answer") and self._buf:
            out.append(Answer(self._buf))
        self._buf = ""
        return out

    # ---- modes ------------------------------------------------------------------------------------
    def _start(self, out: list[Piece]) -> None:
        stripped = self._buf.lstrip()
        opening = self.markers.open
        if stripped.startswith(opening):
            self._buf = stripped[len(opening) :]
            self._mode, self.reasoned = "reasoning_start", True
        elif not (stripped and opening.startswith(stripped)) and stripped:
            self._mode = "answer"
        # else: blanks, or the beginning of the marker: wait

    def _reasoning_start(self, out: list[Piece]) -> None:
        stripped = self._buf.lstrip()
        if stripped:
            self._buf, self._mode = stripped, "reasoning"

    def _reasoning(self, out: list[Piece]) -> None:
        buf, closing = self._buf, self.markers.close
        at = buf.find(closing)
        if at >= 0:
            if buf[:at].rstrip():
                out.append(Reasoning(buf[:at].rstrip()))
            self._buf, self._mode, self.closed = buf[at + len(closing) :], "answer_start", True
            return
        keep = max((k for k in range(1, len(closing)) if buf.endswith(closing[:k])), default=0)
        keep = len(buf) - len(buf[: len(buf) - keep].rstrip())  # and the blanks before it: they may end the block
        if len(buf) > keep:
            out.append(Reasoning(buf[: len(buf) - keep]))
            self._buf = buf[len(buf) - keep :]

    def _answer_start(self, out: list[Piece]) -> None:
        stripped = self._buf.lstrip()
        if stripped:
            self._buf, self._mode = stripped, "answer"

    def _answer(self, out: list[Piece]) -> None:
        out.append(Answer(self._buf))
        self._buf = ""


def split_reasoning(text: str, markers: ReasoningMarkers, inside: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, answer) of a whole reply."""
    stream = ReasoningStream(markers, inside)
    pieces = stream.feed(text) + stream.finish()
    reasoning = "".join(p.text for p in pieces if isinstance(p, Reasoning))
    answer = "".join(p.text for p in pieces if isinstance(p, Answer))
    return (reasoning if stream.reasoned else None), answer


def _merge(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for piece in pieces:
        if not piece.text:
            continue
        if out and type(out[-1]) is type(piece):
            out[-1] = type(piece)(out[-1].text + piece.text)
        else:
            out.append(piece)
    return out
