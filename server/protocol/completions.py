"""/v1/completions (legacy text completions): request, response and stream chunk models."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from ortserve.server.engine.generation import Prompt
from ortserve.server.errors import InvalidRequestError
from ortserve.server.protocol.common import FinishReason, ResponseFormat, SamplingRequest, Usage
from ortserve.server.protocol.logprobs import CompletionLogprobs

TokenIds = list[int]
# prompts x (best_of or n) in one request: its generations queue at once, so a bigger batch would hold every
# other client back for its whole length (OpenAI's own limits: 128 choices; batches of prompts, split by clients)
MAX_GENERATIONS = 1024


class CompletionRequest(SamplingRequest):
    # OpenAI's default for legacy completions is 16 tokens; apps written for it expect that.
    default_max_tokens: ClassVar[int | None] = 16

    prompt: str | list[str] | TokenIds | list[TokenIds]
    suffix: str | None = None
    echo: bool | None = False
    # 0 only with echo: the prompt is scored (its logprobs), nothing is generated
    max_tokens: int | None = Field(None, ge=0, description="most tokens to generate")
    best_of: int | None = Field(None, ge=1, le=20, description="candidates per prompt; the n likeliest are returned")
    logprobs: int | None = Field(None, ge=0, le=5)
    response_format: ResponseFormat | None = None  # extension (as vLLM): JSON mode for text completions

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def requested_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def candidates_per_prompt(self) -> int:
        return self.best_of or self.choices_per_prompt

    def prompts(self) -> list[str | list[int]]:
        """One entry per choice: a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def check(self) -> None:
        super().check()
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequestError(
                "Invalid value for 'max_tokens': it must be at least 1 (0 only with echo, to score the prompt).",
                param="max_tokens",
            )
        if self.best_of is not None and self.best_of < self.choices_per_prompt:
            raise InvalidRequestError("best_of must be greater than or equal to n.", param="best_of")
        if self.stream and self.candidates_per_prompt > self.choices_per_prompt:
            raise InvalidRequestError("best_of cannot be used with stream: true.", param="best_of")
        if self.response_format is not None:
            self.response_format.check()
            if self.min_tokens and self.response_format.constrained:
                raise InvalidRequestError(
                    "min_tokens cannot be combined with a JSON response_format.", param="min_tokens"
                )
        prompts = self.prompts()
        if not prompts:
            raise InvalidRequestError("Invalid value for 'prompt': it must not be an empty array.", param="prompt")
        if len(prompts) * self.candidates_per_prompt > MAX_GENERATIONS:  # queued at once, ahead of other clients
            raise InvalidRequestError(
                f"This request asks for {len(prompts) * self.candidates_per_prompt:,} generations ({len(prompts):,} "
                f"prompts x {self.candidates_per_prompt} each); at most {MAX_GENERATIONS:,} per request: split it.",
                param="prompt",
            )
        many = not isinstance(self.prompt, str) and not (self.prompt and isinstance(self.prompt[0], int))
        for i, p in enumerate(prompts):
            param = f"prompt.{i}" if many else "prompt"
            if isinstance(p, list) and not p:
                raise InvalidRequestError(f"Invalid value for '{param}': empty list of token ids.", param=param)
            if isinstance(p, list) and min(p) < 0:
                raise InvalidRequestError(f"Invalid value for '{param}': token ids are >= 0.", param=param)

    def to_prompts(self, fim_tokens: tuple[str, str, str] | None) -> list[Prompt]:
        """Engine prompts; with `suffix`, fill-in-the-middle through the model's FIM tokens."""
        out = []
        for p in self.prompts():
            if isinstance(p, list):
                if self.suffix:
                    raise InvalidRequestError("suffix needs text prompts, not token ids.", param="suffix")
                out.append(Prompt(token_ids=p))
            elif self.suffix is not None and fim_tokens:
                prefix_tok, suffix_tok, middle_tok = fim_tokens
                out.append(Prompt(text=f"{prefix_tok}{p}{suffix_tok}{self.suffix}{middle_tok}"))
            elif self.suffix:
                raise InvalidRequestError(
                    "This model does not support suffix (it has no fill-in-the-middle tokens).", param="suffix"
                )
            else:
                out.append(Prompt(text=p))
        return out


# ---- responses -------------------------------------------------------------
class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
