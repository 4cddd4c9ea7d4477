"""Constrained decoding inside a runner: the start-up probe, and the checks a request's grammar passes.

One probe for both schedulers: a build of onnxruntime-genai without llguidance only logs a warning and
generates freely, so the probe generates a few greedy tokens under a regex that admits one improbable
string and checks the output. The schedulers differ only in how they generate those tokens (an
og.Generator, or a turn on the og.Engine): each passes its own `GenerateTokens`.

Imported only by the runner process.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import takewhile
from typing import TYPE_CHECKING

import numpy as np

from ortserve.server.engine.generation import Guidance, SamplingParams
from ortserve.server.errors import InvalidRequestError, NotSupportedError

if TYPE_CHECKING:
    from ortserve.server.engine.runner_model import RunnerModel

# The start-up check: a grammar that admits only this text. An unconstrained model never writes it by chance.
GUIDANCE_PROBE = "q7x9z"
_GRAMMAR_CACHE = 256  # compiled-grammar verdicts kept per model (clients resend the same tools and schemas)

# (prompt ids, most tokens, (kind, grammar)) -> the greedy tokens generated under that grammar
GenerateTokens = Callable[[np.ndarray, int, tuple[str, str]], list[int]]


def probe_guidance(model: RunnerModel, generate: GenerateTokens, engine: str = "onnxruntime-genai") -> str | None:
    """None when `generate` enforces grammars; else why not. `engine` names the generating side in the reason."""
    budget = len(GUIDANCE_PROBE) + 4
    try:
        prompt = np.asarray(list(model.tokenizer.encode("Hi")) or [model.bos_id or 0], dtype=np.int32)
        out = list(takewhile(lambda t: t not in model.eos_ids, generate(prompt, budget, ("regex", GUIDANCE_PROBE))))
        text = model.raw_tokenizer.decode(np.asarray(out, dtype=np.int32)) if out else ""
    except Exception as exc:  # noqa: BLE001 - whatever og raises, the answer is "not available"
        return f"{engine} could not apply a grammar: {' '.join(str(exc).split())[:300]}"
    if text != GUIDANCE_PROBE:
        return "this onnxruntime-genai build ignores grammars (it was built without llguidance)"
    return None


def require_guidance(model: RunnerModel, params: SamplingParams) -> None:
    """Refuse a grammar this runner cannot enforce, and one combined with min_tokens (both paths)."""
    guidance = params.guidance
    if guidance is None:
        return
    if params.min_tokens:  # og would suppress the end of sequence the finished grammar demands
        raise InvalidRequestError("min_tokens cannot be combined with constrained output.", param="min_tokens")
    if model.guidance_probe is not None:  # put off at load (the batched path's lazy og.Model): run it now
        probe, model.guidance_probe = model.guidance_probe, None
        model.guidance_error = probe()
    if model.guidance_error is not None:
        raise NotSupportedError(
            f"Constrained decoding is not available on this server ({model.guidance_error}), so "
            f"'{guidance.param}' cannot be honoured.",
            param=guidance.param,
        )


def grammar_reason(exc: BaseException) -> str:
    """llguidance's complaint, from the error onnxruntime-genai raised for a grammar."""
    return " ".join(str(exc).removeprefix("Error creating grammar: ").split())[:1000]


def grammar_error(model: RunnerModel, kind: str, data: str) -> str | None:
    """llguidance's complaint about a grammar, or None when it compiles (cached; compiled by an og.Generator)."""
    import onnxruntime_genai as og

    key = (kind, data)
    if key in model.grammar_errors:
        model.grammar_errors.move_to_end(key)
        return model.grammar_errors[key]
    gp = og.GeneratorParams(model.og())
    gp.set_search_options(max_length=1)  # never run: creating the generator compiles the grammar
    try:
        gp.set_guidance(kind, data)
        og.Generator(model.og(), gp)
        error = None
    except RuntimeError as exc:
        error = grammar_reason(exc)
    model.grammar_errors[key] = error
    if len(model.grammar_errors) > _GRAMMAR_CACHE:
        model.grammar_errors.popitem(last=False)
    return error


def check_grammar(model: RunnerModel, guidance: Guidance) -> None:
    """Raise the request's 400 when its grammar does not compile, naming the field at fault (Generator path;
    the Engine path learns it when the turn begins)."""
    error = grammar_error(model, guidance.kind, guidance.data)
    if error is None:
        return
    for part in guidance.parts:
        part_error = grammar_error(model, part.kind, part.data)
        if part_error is not None:
            raise InvalidRequestError(f"Invalid schema for {part.label or part.param}: {part_error}", param=part.param)
    raise InvalidRequestError(f"Invalid value for '{guidance.param}': {error}", param=guidance.param)
