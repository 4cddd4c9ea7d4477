"""How `SamplingParams` become onnxruntime-genai's settings, for each scheduler: the og.Generator's search
options and the og.Engine's turn options (pure; no onnxruntime-genai here)."""

from __future__ import annotations

from typing import Any

from ortserve.server.engine.generation import SamplingParams

SEED_RANGE = 2**31 - 1  # og takes a non-negative int32 seed; -1 means "pick one at random"


def og_seed(seed: int) -> int:
    """A request's seed in og's range (any int the protocol accepts)."""
    return seed % SEED_RANGE


def search_options(params: SamplingParams, prompt_tokens: int, budget: int) -> dict[str, Any]:
    """og.Generator's options; with our own logits processing, it applies no penalty of its own."""
    options: dict[str, Any] = {"max_length": prompt_tokens + budget}
    if not params.processes_logits:
        options["repetition_penalty"] = float(params.repetition_penalty)
        if params.min_tokens:
            options["min_length"] = prompt_tokens + min(params.min_tokens, budget)
    if params.temperature <= 0:
        return {**options, "do_sample": False}
    return {
        **options,
        "do_sample": True,
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(params.top_k),  # 0: no cut (og's own default would be the config's 50)
        "random_seed": -1 if params.seed is None else og_seed(params.seed),
    }


def turn_settings(params: SamplingParams, budget: int) -> list[tuple[str, tuple]]:
    """The `og.TurnOptions` calls for a request on the og.Engine: (method, arguments), in order."""
    calls: list[tuple[str, tuple]] = [("set_max_generated_tokens", (budget,))]
    if params.temperature <= 0:
        calls.append(("set_do_sample", (False,)))
    else:
        calls += [
            ("set_do_sample", (True,)),
            ("set_temperature", (float(params.temperature),)),
            ("set_top_p", (float(params.top_p),)),
            ("set_top_k", (int(params.top_k),)),
        ]
        if params.seed is not None:
            calls.append(("set_seed", (og_seed(params.seed),)))
    if params.repetition_penalty != 1.0:
        calls.append(("set_repetition_penalty", (float(params.repetition_penalty),)))
    if params.min_tokens:
        calls.append(("set_min_generated_tokens", (min(params.min_tokens, budget),)))
    if params.guidance is not None:
        calls.append(("set_guidance", (params.guidance.kind, params.guidance.data)))
    return calls
