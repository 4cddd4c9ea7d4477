"""The generation interface the HTTP layer speaks to: `TextGenerator` and its engine-neutral types.

The server never touches onnxruntime-genai or onnxruntime directly: it holds a
`TextGenerator` (generation; the embeddings' interface is `embedder.Embedder`) and
talks to it in the types below. Implementations are named for their backend
(`RunnerGenerator`, `OrtEmbedder`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from ortserve.server.chat.reasoning import ReasoningMarkers, prompt_opens_reasoning
from ortserve.server.errors import APIError


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
    # a reasoning model's grammar (chat/reasoning_grammar.py): `data` lets the reply open its reasoning block,
    # `opened` is the grammar for a prompt that opened the block itself; the runner picks with `for_prompt`
    opened: OpenedReasoning | None = None

    def for_prompt(self, prompt_text: str | None) -> Guidance:
        """The grammar for this rendered prompt (a reasoning model's reply starts inside a block the prompt opened)."""
        if self.opened is None:
            return self
        inside = prompt_opens_reasoning(prompt_text, self.opened.markers)
        return replace(self, data=self.opened.data if inside else self.data, opened=None)


@dataclass(frozen=True)
class OpenedReasoning:
    """A reasoning model's grammar for a prompt that ends inside an open reasoning block."""

    markers: ReasoningMarkers
    data: str


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
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit before sampling)
    logprobs: int | None = None  # None: none; k: each generated token's logprob and its k likeliest alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo); the first one has none

    @property
    def processes_logits(self) -> bool:
        """Whether the logits pass through our own processing (the fast path leaves them to onnxruntime-genai)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias or self.logprobs is not None)


@dataclass(frozen=True)
class Prompt:
    """What to generate from: chat messages (rendered by the model's template), text, or token ids.

    `images` are the chat's images in the order their parts appear in `messages` (where each image
    part is `{"type": "image"}`), already decoded and re-encoded as PNG by the server.
    """

    messages: list[dict] | None = None
    tools: list[dict] | None = None
    text: str | None = None
    token_ids: list[int] | None = None
    images: tuple[bytes, ...] = ()
    # variables set for the chat template (Qwen3's enable_thinking), with the template they are set in
    template_vars: tuple[tuple[str, object], ...] = ()
    template: str | None = None


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
class TokenLogprob:
    """A token's log probability; `top` holds the likeliest tokens at its position, best first."""

    token_id: int
    token: str  # its text; bytes that are not whole UTF-8 characters are written as \\xNN escapes
    bytes: bytes  # its exact bytes
    logprob: float | None  # None: nothing predicts it (a prompt's first token)
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class PromptLogprobs:
    """Sent after the prompt is read, before any text, when `prompt_logprobs` is asked: one entry per
    prompt token (the first one's logprob is None: nothing predicts it)."""

    entries: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_ids: tuple[int, ...]
    # with `logprobs`: the tokens of this delta whose text is in the output (a matched stop string's are not)
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    # with `logprobs`: the sum over every generated token, the end-of-sequence token included
    cumulative_logprob: float | None = None
    cached_tokens: int = 0  # prompt tokens read from the prompt cache instead of prefilled


GenerationEvent = Started | PromptLogprobs | TextDelta | Finished


class TextGenerator(Protocol):
    """One loaded generation model."""

    context_length: int  # the served context (num_ctx), in tokens
    fim_tokens: tuple[str, str, str] | None  # (prefix, suffix, middle) special tokens, if the model has them
    device: str  # the execution provider it runs on: "cpu", "cuda", ...
    guidance_error: str | None  # why grammars (`SamplingParams.guidance`) cannot be enforced; None: they are

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Yield Started, PromptLogprobs (if asked), TextDelta*, then Finished. Errors are raised as APIError.

        Closing the iterator early (client disconnect) cancels the generation.
        """
        ...

    def interrupt(self, error: APIError) -> None:
        """End every generation in flight by raising `error` in it (the server is stopping)."""
        ...

    async def close(self) -> None: ...
