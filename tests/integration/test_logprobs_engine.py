"""Logprobs in the engine on a real model (tiny random Llama, fp32): prompt logprobs read across
prefill chunks, the fallback for models that give only the last position's logits, stop strings,
and the fast path left to onnxruntime-genai. References are transformers' logits.

GeneratorRequests are driven in this process (as the runner's scheduler drives them); `generator` goes through a runner.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ortserve.server.engine import ipc, load_generator
from ortserve.server.engine.admission import admit
from ortserve.server.engine.generation import (
    Finished,
    GenerationRequest,
    Prompt,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
)
from ortserve.server.engine.generator_request import GeneratorRequest
from ortserve.server.engine.generator_scheduler import load
from ortserve.server.engine.sampling import search_options
from ortserve.server.errors import InvalidRequestError

pytestmark = pytest.mark.slow

TEXT = "The quick brown fox jumps over the lazy dog. Hello world, how are you today?"
TOL = 1e-4


@pytest.fixture(scope="module")
def model(chat_store):
    loaded, _ = load(chat_store.get("tiny-llama").folder, ipc.RunnerOptions(None, "cpu", 2, 1, 16))
    return loaded


@pytest.fixture(scope="module")
def reference(checkpoints):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["llama"], dtype=torch.float32).eval()

    def log_softmax(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0], -1).numpy()

    return log_softmax


def run(loaded, prompt: Prompt, chunk: int, wrap=None, **params) -> tuple[GeneratorRequest, list]:
    accepted = GeneratorRequest(
        1, loaded, admit(loaded, GenerationRequest("r", prompt, SamplingParams(**params))), chunk
    )
    accepted.start()
    if wrap is not None:
        accepted.generator = wrap(accepted.generator)
    events = []
    while not accepted.done:
        events += accepted.step()
    return accepted, events


class LastRowOnly:
    """An og.Generator whose model returns the logits of a chunk's last position only (some exports do)."""

    def __init__(self, generator):
        self._g = generator
        self.rewinds = 0

    def get_output(self, name):
        return np.asarray(self._g.get_output(name))[:, -1:, :]

    def rewind_to(self, length):
        self.rewinds += 1
        self._g.rewind_to(length)

    def __getattr__(self, name):
        return getattr(self._g, name)


@pytest.mark.parametrize("chunk", [1, 5, 128])
def test_prompt_logprobs_across_prefill_chunks(model, reference, chunk):
    accepted, events = run(model, Prompt(text=TEXT), chunk, max_tokens=0, prompt_logprobs=3)
    assert isinstance(events[0], PromptLogprobs) and isinstance(events[-1], Finished)
    assert events[-1].completion_tokens == 0 and len(events) == 2  # max_tokens 0: the prompt is only read
    ids = [int(t) for t in accepted.ids]
    expected = reference(ids)
    entries = events[0].entries
    assert [e.token_id for e in entries] == ids and entries[0].logprob is None and entries[0].top == ()
    assert [e.logprob for e in entries[1:]] == pytest.approx(
        [expected[i - 1, t] for i, t in enumerate(ids) if i], abs=TOL
    )
    for i, e in enumerate(entries[1:], start=1):
        assert [t.logprob for t in e.top] == pytest.approx(np.sort(expected[i - 1])[::-1][:3], abs=TOL)


def test_prompt_logprobs_when_the_model_gives_only_the_last_position(model, reference):
    wrapped = []

    def wrap(g):
        wrapped.append(LastRowOnly(g))
        return wrapped[0]

    accepted, events = run(
        model, Prompt(text=TEXT), 8, wrap=wrap, max_tokens=4, temperature=0, prompt_logprobs=0, logprobs=0
    )
    assert wrapped[0].rewinds == 1 and accepted.prefill_chunk == 1  # the first chunk is read again, token by token
    ids = [int(t) for t in accepted.ids]
    generated = [t for e in events if isinstance(e, TextDelta) for t in e.token_ids]
    expected = reference(ids + generated)
    got = [e.logprob for e in events[0].entries[1:]] + [e.logprob for ev in events[1:-1] for e in ev.logprobs]
    assert got == pytest.approx([expected[i - 1, t] for i, t in enumerate(ids + generated) if i], abs=TOL)
    assert generated == [int(np.argmax(expected[len(ids) - 1 + i])) for i in range(len(generated))]


def test_stop_string_tokens_are_not_reported_and_the_sum_counts_every_token(model, reference):
    _, free = run(model, Prompt(text=TEXT), 16, max_tokens=12, temperature=0, logprobs=1)
    tokens = [e for ev in free if isinstance(ev, TextDelta) for e in ev.logprobs]
    text = "".join(ev.text for ev in free if isinstance(ev, TextDelta))
    cut = len(tokens) // 2
    head = b"".join(e.bytes for e in tokens[:cut]).decode(errors="replace")
    stop = text[len(head) : len(head) + 2]  # starts exactly where token `cut` starts
    assert len(stop) == 2 and text.find(stop) == len(head)
    accepted, events = run(model, Prompt(text=TEXT), 16, max_tokens=12, temperature=0, logprobs=1, stop=[stop])
    reported = [e for ev in events if isinstance(ev, TextDelta) for e in ev.logprobs]
    assert [e.token_id for e in reported] == [e.token_id for e in tokens[:cut]]
    assert "".join(ev.text for ev in events if isinstance(ev, TextDelta)) == head
    generated = [t for ev in events if isinstance(ev, TextDelta) for t in ev.token_ids]
    expected = reference([int(t) for t in accepted.ids] + generated)[len(accepted.ids) - 1 :]
    assert events[-1].cumulative_logprob == pytest.approx(
        sum(expected[i, t] for i, t in enumerate(generated)), abs=1e-3
    )


def test_unknown_logit_bias_ids_name_the_param(model):
    with pytest.raises(InvalidRequestError) as info:
        run(model, Prompt(text="hi"), 16, logit_bias=((model.vocab_size, 1.0),))
    assert info.value.param == "logit_bias" and str(model.vocab_size) in info.value.message


def test_the_fast_path_leaves_penalties_to_genai():
    fast = search_options(SamplingParams(repetition_penalty=1.3, min_tokens=4), 10, 20)
    assert (fast["repetition_penalty"], fast["min_length"]) == (1.3, 14)
    ours = search_options(SamplingParams(repetition_penalty=1.3, min_tokens=4, logprobs=0), 10, 20)
    assert "repetition_penalty" not in ours and "min_length" not in ours  # applied once, by LogitsProcessor


async def test_min_tokens_with_logprobs_still_holds_the_end_back(chat_store):
    """og's min_length is off on our path: the end of sequence must still wait for min_tokens."""
    gen = await load_generator(chat_store.get("tiny-llama"))
    eos = 2
    try:
        request = GenerationRequest(
            "r",
            Prompt(text="hi"),
            SamplingParams(max_tokens=6, min_tokens=6, temperature=0, logit_bias=((eos, 100.0),), logprobs=0),
        )
        events = await asyncio.wait_for(_collect(gen, request), 60)
        assert events[-1].completion_tokens == 6 and events[-1].finish_reason == "length"
        free = GenerationRequest(
            "r", Prompt(text="hi"), SamplingParams(max_tokens=6, temperature=0, logit_bias=((eos, 100.0),), logprobs=0)
        )
        events = await asyncio.wait_for(_collect(gen, free), 60)
        assert events[-1].completion_tokens == 1 and events[-1].finish_reason == "stop"  # the bias does force it
        assert events[-1].cumulative_logprob == pytest.approx(0, abs=1e-3)
    finally:
        await gen.close()


async def _collect(gen, request):
    return [e async for e in gen.generate(request)]
