"""What every generation request goes through in a runner before it runs, on either path (og.Generator or the
batched decoder): its prompt read as token ids (and the processor's tensors, with images), its completion
budget, its grammar chosen for the rendered prompt and compiled, its logit_bias checked. A bad request fails
here, with its 400.

Imported only by the runner process (it imports onnxruntime-genai through prompts.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ortserve.server.engine.generation import GenerationRequest, SamplingParams, Started
from ortserve.server.engine.guidance import check_grammar, require_guidance
from ortserve.server.engine.prompts import grant_budget, read_prompt
from ortserve.server.engine.runner_model import RunnerModel
from ortserve.server.errors import InvalidRequestError


@dataclass
class Admitted:
    """A request that passed the checks: what either path starts from."""

    params: SamplingParams
    ids: np.ndarray  # the prompt's token ids
    images: Any  # the multimodal processor's tensors, read in one piece at prefill; None without images
    budget: int  # completion tokens granted (0: only read the prompt)
    started: Started
    chat: bool

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)


def admit(model: RunnerModel, request: GenerationRequest) -> Admitted:
    """Read and check `request` against `model`; raises the request's APIError."""
    params = request.params
    ids, prompt_text, images = read_prompt(model, request.prompt, params)
    chat = request.prompt.messages is not None
    budget = grant_budget(len(ids), params.max_tokens, model.context_length, chat=chat)
    require_guidance(model, params)
    if params.guidance is not None:
        guidance = params.guidance.for_prompt(prompt_text)  # a reasoning model's form for this prompt
        params = replace(params, guidance=guidance)
        check_grammar(model, guidance)
    bad = [t for t, _ in params.logit_bias if not 0 <= t < model.vocab_size]
    if bad:
        raise InvalidRequestError(
            f"Invalid key in 'logit_bias': token id {bad[0]} is not in this model's vocabulary "
            f"(ids 0 to {model.vocab_size - 1}).",
            param="logit_bias",
        )
    return Admitted(params, ids, images, budget, Started(len(ids), budget, prompt_text), chat)
