"""The backend interface the HTTP layer speaks to.

The server never touches onnxruntime-genai or onnxruntime directly: it holds a
`TextGenerator` (generation) or an `Embedder` (embeddings) and talks to them in
the engine-neutral types below. Implementations start with their backend's name
(`GenaiGenerator`, `OrtEmbedder`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Literal, Protocol


@dataclass(frozen=True)
class GuidancePart:
    """One piece of a grammar, compiled alone to name the request field at fault when the whole fails."""

    param: str  # e.g. "tools.0.function.parameters"
    kind: str
    data: str
    label: str = ""  # what it is, for the message: "function 'get_weather'"


@dataclass(frozen=True)
class Guidance:
    """Constrained decoding: every generated token keeps the output inside this grammar.

    kind is "json_schema", "regex" or "lark_grammar" (llguidance's syntaxes); once the
    grammar is complete only the end of sequence may follow. `param` names the request
    field the constraint comes from (in errors); `parts` are checked one by one when
    `data` does not compile, to say which field is at fault.
    """

    kind: Literal["json_schema", "regex", "lark_grammar"]
    data: str
    param: str
    parts: tuple[GuidancePart, ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    """Engine-neutral sampling settings, already validated by the protocol layer."""

    max_tokens: int | None = None  # None: up to the end of the context
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0  # end of sequence is suppressed until this many tokens (vLLM's extension)
    guidance: Guidance | None = None
    keep_special: tuple[str, ...] = ()  # special tokens whose text stays in the output (tool-call markers)


@dataclass(frozen=True)
class Prompt:
    """What to generate from: chat messages (rendered by the model's template), text, or token ids."""

    messages: list[dict] | None = None
    tools: list[dict] | None = None
    text: str | None = None
    token_ids: list[int] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: Prompt
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class Started:
    """First event: the prompt was accepted; its exact token count."""

    prompt_tokens: int
    max_tokens: int  # the budget actually granted
    prompt_text: str | None = None  # the rendered / decoded prompt (for echo)


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = Started | TextDelta | Finished


class TextGenerator(Protocol):
    """One loaded generation model."""

    context_length: int  # the served context (num_ctx), in tokens
    fim_tokens: tuple[str, str, str] | None  # (prefix, suffix, middle) special tokens, if the model has them
    device: str  # the execution provider it runs on: "cpu", "cuda", ...
    guidance_error: str | None  # why grammars (`SamplingParams.guidance`) cannot be enforced; None: they are

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Yield Started, then TextDelta*, then Finished. Errors are raised as server.errors.APIError.

        Closing the iterator early (client disconnect) cancels the generation.
        """
        ...

    async def close(self) -> None: ...
