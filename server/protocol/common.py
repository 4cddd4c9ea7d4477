"""Shared pieces of the OpenAI protocol: field types, request parsing, usage.

Pure data: pydantic only, no Quart, no ONNX Runtime. A request that does not
validate becomes an `InvalidRequestError` whose `param` is the field path
("messages.0.role", "temperature"), as OpenAI reports it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ortserve.core.durations import parse_duration
from ortserve.core.model_config import SamplingDefaults
from ortserve.server.engine.generation import SamplingParams
from ortserve.server.errors import InvalidRequestError

# ---- shared field definitions (reused by every request model) -------------
ModelName = Annotated[str, Field(min_length=1, description="a served model name or alias")]
MaxTokens = Annotated[int | None, Field(None, ge=1, description="most tokens to generate")]
# The logits are divided (in float32) by temperature and repetition_penalty: a smaller divisor overflows them to
# inf and the logprobs to NaN. A temperature under it is greedy decoding (as vLLM), a smaller penalty a 400.
SAMPLING_EPS = 1e-5
Temperature = Annotated[float | None, Field(None, ge=0, le=2, description="0 (or under 1e-5) is greedy")]
TopP = Annotated[float | None, Field(None, ge=0, le=1, description="nucleus sampling mass")]
TopK = Annotated[int | None, Field(None, ge=0, description="extension: keep the k likeliest tokens; 0 = off")]
Penalty = Annotated[float | None, Field(None, ge=-2, le=2)]
MinTokens = Annotated[int | None, Field(None, ge=0, description="extension (vLLM): no end of sequence before this")]
RepetitionPenalty = Annotated[
    float | None, Field(None, ge=SAMPLING_EPS, description="extension: >1 discourages repeats")
]
Seed = Annotated[int | None, Field(None, description="same seed + same request -> same output")]
Stop = Annotated[
    str | Annotated[list[str], Field(max_length=4)] | None,
    Field(None, description="up to 4 sequences where generation stops (not included)"),
]
N = Annotated[int | None, Field(None, ge=1, le=128, description="choices per prompt")]
User = Annotated[str | None, Field(None, description="end-user id; accepted and ignored")]


def _check_duration(value: str | float | None) -> str | float | None:
    if value is not None:
        parse_duration(value)  # ValueError -> a 400 naming keep_alive
    return value


KeepAlive = Annotated[
    str | float | None,
    AfterValidator(_check_duration),
    Field(
        None,
        description="extension (Ollama): how long the model stays loaded after this request: seconds "
        "or a duration ('5m', '1h30m'); 0 = unload at once, negative = forever",
    ),
]
LogitBias = Annotated[
    dict[str, float] | None, Field(None, description="token id (a string) -> -100..100, added to its logit")
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool | None = None


class OpenAIModel(BaseModel):
    """Base of every request model: unknown fields are ignored, types are checked as JSON types, and numbers
    are finite (NaN, Infinity and 1e999 are no JSON numbers, nor in range for any field)."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    def check(self) -> None:
        """Reject valid-looking requests that ask for something not supported yet."""


# OpenAI's rule for function and schema names
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class JSONSchemaFormat(OpenAIModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    def check(self) -> None:
        if self.type == "json_schema" and self.json_schema is None:
            raise InvalidRequestError(
                "Missing required parameter: 'response_format.json_schema'.", param="response_format.json_schema"
            )

    @property
    def constrained(self) -> bool:
        return self.type != "text"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class SamplingRequest(OpenAIModel):
    """The sampling fields chat and completions share, and their conversion to engine parameters."""

    model: ModelName
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = None
    top_p: TopP = None
    top_k: TopK = None
    seed: Seed = None
    stop: Stop = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    repetition_penalty: RepetitionPenalty = None
    min_tokens: MinTokens = None
    n: N = None
    logit_bias: LogitBias = None
    user: User = None
    keep_alive: KeepAlive = None

    # when neither the request nor the model's config sets max_tokens (None: up to the context's end)
    default_max_tokens: ClassVar[int | None] = None

    def requested_max_tokens(self) -> int | None:
        raise NotImplementedError

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def check(self) -> None:
        self.logit_bias_pairs()

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token id, bias) pairs; whether the ids exist is the model's to say."""
        pairs = []
        for key, bias in (self.logit_bias or {}).items():
            if not (key.isascii() and key.isdigit()):
                raise InvalidRequestError(
                    f"Invalid key in 'logit_bias': '{key}' is not a token id (a non-negative integer).",
                    param="logit_bias",
                )
            if not -100 <= bias <= 100:
                raise InvalidRequestError(
                    f"Invalid value for 'logit_bias.{key}': {bias} is outside the range -100 to 100.",
                    param="logit_bias",
                )
            pairs.append((int(key), float(bias)))
        return tuple(sorted(pairs))

    def to_sampling_params(self, defaults: SamplingDefaults | None = None) -> SamplingParams:
        """Engine parameters: the request's values win over the model's configured defaults."""
        d = defaults or SamplingDefaults()

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(self, name)
            if value is None:
                value = getattr(d, name)
            return fallback if value is None else value

        temperature = float(pick("temperature", 1.0))
        top_p = float(pick("top_p", 1.0))
        if top_p == 0 or temperature < SAMPLING_EPS:  # keep only the likeliest token: greedy decoding
            temperature, top_p = 0.0, 1.0
        stop = self.stop if self.stop is not None else d.stop
        if isinstance(stop, str):
            stop = [stop]
        max_tokens = self.requested_max_tokens()
        if max_tokens is None:
            max_tokens = d.max_tokens if d.max_tokens is not None else self.default_max_tokens
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=int(pick("top_k", 0)),
            seed=pick("seed", None),
            stop=tuple(s for s in (stop or ()) if s),
            presence_penalty=float(pick("presence_penalty", 0.0)),
            frequency_penalty=float(pick("frequency_penalty", 0.0)),
            repetition_penalty=float(pick("repetition_penalty", 1.0)),
            min_tokens=self.min_tokens or 0,
            logit_bias=self.logit_bias_pairs(),
            logprobs=self.requested_logprobs(),
        )

    def requested_logprobs(self) -> int | None:
        """None: no logprobs; k: each token's logprob and its k likeliest alternatives."""
        raise NotImplementedError


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens served from the prompt cache (their prefill skipped)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


FinishReason = Literal["stop", "length", "tool_calls"]

# ---- parsing -------------------------------------------------------------
R = TypeVar("R", bound=OpenAIModel)

JSON_DEPTH = 200  # pydantic's JSON parser refuses deeper nesting ("recursion limit exceeded")

# Union members show up in pydantic's error locations ("content", "str"); they are not fields.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_type_tag(part: str) -> bool:
    return part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper()


def param_path(loc: tuple[int | str, ...]) -> str | None:
    parts = [str(p) for p in loc if isinstance(p, int) or not _is_type_tag(p)]
    return ".".join(parts) or None


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """The most specific of pydantic's errors, as OpenAI's invalid_request_error."""
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid" and "recursion limit" in str(errors[0].get("ctx", {}).get("error", "")):
        return InvalidRequestError(
            f"The request body nests JSON more than {JSON_DEPTH} levels deep (and a JSON schema in it may nest at "
            "most 64 levels: see the README's request limits)."
        )
    if errors[0]["type"] == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        )
    if errors[0]["type"] == "model_type" and not errors[0]["loc"]:
        return InvalidRequestError("The request body must be a JSON object.")
    # deepest location first; on a tie, a failed constraint says more than "wrong union member type"
    best = max(errors, key=lambda e: (len(param_path(e["loc"]) or ""), not e["type"].endswith("_type")))
    param = param_path(best["loc"])
    if best["type"] == "missing":
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    return InvalidRequestError(f"Invalid value for '{param}': {best['msg']}.", param=param)


def parse_request(cls: type[R], body: bytes | str | dict[str, Any]) -> R:
    """Validate a request body (raw JSON or an already decoded object) into `cls`, then `check()` it."""
    if isinstance(body, (bytes, str)) and not body.strip():
        raise InvalidRequestError("The request body is empty; expected a JSON object.")
    try:
        if isinstance(body, (bytes, str)):
            request = cls.model_validate_json(body)
        else:
            request = cls.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    request.check()
    return request


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error JSON, as `ortserve.server.errors.error_body` writes it (documented in /openapi.json)."""

    error: ErrorDetail


class OllamaErrorResponse(BaseModel):
    """Ollama's error JSON (on `/` and `/api/*`)."""

    error: str
