"""The generation backend on a real onnxruntime-genai model (tiny random Llama, fp32), in its runner process.

References are independent: transformers' greedy `generate` (with an OpenAI-penalty
logits processor where penalties apply). Concurrency is checked by event order,
never by wall-clock limits; timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ortserve.core.devices import count_cores
from ortserve.core.model_config import ModelConfig
from ortserve.core.store import ModelEntry
from ortserve.server.engine import load_generator
from ortserve.server.engine.devices import resolve_device
from ortserve.server.engine.generation import Finished, GenerationRequest, Prompt, SamplingParams, Started, TextDelta
from ortserve.server.engine.runner_loop import merge_deltas
from ortserve.server.engine.runner_model import find_fim_tokens
from ortserve.server.errors import BackendError, ContextLengthError, InvalidRequestError, NotSupportedError
from tests.integration.generation import HANG, ids_of, run

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Hello world"}]
LONG_TEXT = "The quick brown fox jumps over the lazy dog. Hello world, how are you today? " * 105  # ~1890 tokens


@pytest.fixture(scope="session")
def engine_checkpoint(checkpoints) -> Path:
    return checkpoints["llama"]


@pytest.fixture(scope="session")
def engine_entry(tmp_path_factory, engine_checkpoint) -> ModelEntry:
    """The llama checkpoint built by the genai builder as fp32 (about 5 s); swap for chat_store.get("tiny-llama")."""
    root = tmp_path_factory.mktemp("engine")
    out = root / "tiny-llama"
    builder = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", "tiny-llama"]
    cmd = [*builder, "-i", str(engine_checkpoint), "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(root / "cache")]
    subprocess.run(cmd, check=True, capture_output=True)
    return ModelEntry("tiny-llama", ModelConfig(), out, {"task": "chat"})


@pytest.fixture(scope="session")
async def generator(engine_entry):
    gen = await load_generator(engine_entry, prefill_chunk=32)
    yield gen
    await gen.close()


@pytest.fixture(scope="session")
def reference(engine_checkpoint):
    """transformers' tokenizer and model for the same checkpoint."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(engine_checkpoint)
    model = transformers.AutoModelForCausalLM.from_pretrained(engine_checkpoint, dtype=torch.float32).eval()
    return tokenizer, model


def chat(messages=CHAT, **params) -> GenerationRequest:
    return GenerationRequest("req", Prompt(messages=messages), SamplingParams(**params))


def text(prompt: str, **params) -> GenerationRequest:
    return GenerationRequest("req", Prompt(text=prompt), SamplingParams(**params))


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas)


def hf_greedy(reference, messages, max_new_tokens, logits_processor=None, repetition_penalty=None) -> list[int]:
    import torch

    tokenizer, model = reference
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = prompt["input_ids"]
    extra = {"repetition_penalty": repetition_penalty} if repetition_penalty else {}
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            logits_processor=logits_processor,
            **extra,
        )
    return out[0, ids.shape[1] :].tolist()


def without_eos(tokens: list[int], eos: int = 2) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


# ---- correctness against transformers ----------------------------------------------
async def test_greedy_tokens_equal_transformers(generator, reference):
    started, deltas, finished = await run(generator, chat(max_tokens=24, temperature=0))
    expected = hf_greedy(reference, CHAT, 24)
    tokenizer, _ = reference
    assert started.prompt_text == tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert started.prompt_tokens == len(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"])
    assert started.max_tokens == 24
    assert ids_of(deltas) == without_eos(expected)
    assert finished.completion_tokens == len(expected)
    assert finished.finish_reason == ("stop" if 2 in expected else "length")
    # the streamed pieces join to exactly transformers' text (split characters held back, invalid bytes as U+FFFD)
    assert "".join(d.text for d in deltas) == tokenizer.decode(expected, skip_special_tokens=True)


async def test_concurrent_requests_match_their_solo_runs(generator):
    conversations = [[{"role": "user", "content": c}] for c in ("Hello world", "What is the weather in Paris?", "Hi")]
    solo = [ids_of((await run(generator, chat(m, max_tokens=16, temperature=0)))[1]) for m in conversations]
    together = await asyncio.gather(*(run(generator, chat(m, max_tokens=16, temperature=0)) for m in conversations))
    assert [ids_of(d) for _, d, _ in together] == solo
    assert len({tuple(s) for s in solo}) == 3


async def test_penalties_follow_openai_formula(generator, reference):
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    presence, frequency = 0.4, 0.7
    prompt_len = len(reference[0].apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"])

    class OpenAIPenalties(LogitsProcessor):
        def __call__(self, input_ids, scores):
            counts = torch.zeros_like(scores)
            generated = input_ids[:, prompt_len:]
            counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence

    expected = hf_greedy(reference, CHAT, 24, LogitsProcessorList([OpenAIPenalties()]))
    plain = hf_greedy(reference, CHAT, 24)
    assert without_eos(expected) != without_eos(plain)  # the penalties matter for this prompt
    _, deltas, _ = await run(
        generator, chat(max_tokens=24, temperature=0, presence_penalty=presence, frequency_penalty=frequency)
    )
    assert ids_of(deltas) == without_eos(expected)

    expected_rep = hf_greedy(reference, CHAT, 24, repetition_penalty=1.5)
    _, deltas, _ = await run(generator, chat(max_tokens=24, temperature=0, repetition_penalty=1.5))
    assert without_eos(expected_rep) != without_eos(plain)
    assert ids_of(deltas) == without_eos(expected_rep)


# ---- sampling ---------------------------------------------------------------------------
async def test_seed_makes_sampling_reproducible_even_interleaved(generator):
    def sampled(seed):
        return chat(max_tokens=24, temperature=1.0, top_p=0.95, seed=seed)

    a, b, c, d, e = await asyncio.gather(
        run(generator, sampled(7)),
        run(generator, sampled(7)),
        run(generator, sampled(8)),
        run(generator, sampled(None)),
        run(generator, sampled(None)),
    )
    assert ids_of(a[1]) == ids_of(b[1])
    assert ids_of(a[1]) != ids_of(c[1])
    assert ids_of(d[1]) != ids_of(e[1])
    greedy = ids_of((await run(generator, chat(max_tokens=24, temperature=0)))[1])
    assert ids_of(a[1]) != greedy


# ---- stop strings ---------------------------------------------------------------------
async def test_stop_string_split_across_tokens(generator, reference):
    _, deltas, _ = await run(generator, chat(max_tokens=40, temperature=0))
    full, ids = text_of(deltas), ids_of(deltas)
    # token boundaries in `full` (deltas may carry several tokens), then a two-character stop string
    # straddling one of them, first seen there
    tokenizer, _ = reference
    chosen = None
    for k in range(1, len(ids)):
        head = tokenizer.decode(ids[:k])
        at = len(head)
        if "\ufffd" in head or not full.startswith(head) or not 0 < at < len(full):
            continue
        stop = full[at - 1 : at + 1]
        if full.find(stop) == at - 1 and not stop.isspace():
            chosen = stop
            break
    assert chosen is not None, f"no two-token stop string in {full!r}"
    _, stopped_deltas, finished = await run(generator, chat(max_tokens=40, temperature=0, stop=("never-there", chosen)))
    assert text_of(stopped_deltas) == full[: full.find(chosen)]
    assert finished.finish_reason == "stop"
    assert finished.completion_tokens < 40


# ---- prompts and lengths -----------------------------------------------------------
async def test_context_length_is_checked_like_openai(engine_entry):
    gen = await load_generator(engine_entry, num_ctx=64)
    try:
        assert gen.context_length == 64
        started, _, finished = await run(gen, chat(temperature=0))
        assert started.max_tokens == 64 - started.prompt_tokens  # no max_tokens: the rest of the context
        assert finished.completion_tokens <= started.max_tokens
        p = started.prompt_tokens

        with pytest.raises(ContextLengthError) as info:
            await run(gen, chat(max_tokens=60, temperature=0))
        assert info.value.message == (
            f"This model's maximum context length is 64 tokens. However, you requested {p + 60} tokens "
            f"({p} in the messages, 60 in the completion). Please reduce the length of the messages or completion."
        )
        assert info.value.param == "messages" and info.value.status == 400

        with pytest.raises(ContextLengthError) as info:
            await run(gen, text(LONG_TEXT))
        assert info.value.param == "prompt"
        assert "However, your prompt resulted in" in info.value.message

        # exactly full is allowed, and generation then runs to the last slot of the context
        started, _, finished = await run(gen, chat(max_tokens=64 - p, temperature=0, frequency_penalty=2.0))
        assert started.max_tokens == 64 - p
        assert finished.finish_reason == "length" and finished.completion_tokens == 64 - p
    finally:
        await gen.close()
    capped = await load_generator(engine_entry, num_ctx=1_000_000)
    try:
        assert capped.context_length == 2048  # the model's own limit
    finally:
        await capped.close()


async def test_token_id_prompts_are_validated(generator, reference):
    tokenizer, _ = reference
    ids = tokenizer("Hello world")["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_start|>")]  # special
    started, _, _ = await run(generator, GenerationRequest("r", Prompt(token_ids=ids), SamplingParams(max_tokens=2)))
    assert started.prompt_tokens == len(ids)
    assert started.prompt_text == "Hello world<|im_start|>"  # an echoed prompt keeps its special tokens

    vocab = len(tokenizer)
    for bad in ([5, vocab], [-1], [1.5]):
        with pytest.raises(InvalidRequestError) as info:
            await run(generator, GenerationRequest("r", Prompt(token_ids=bad), SamplingParams(max_tokens=2)))
        assert info.value.param == "prompt" and info.value.status == 400


async def test_bad_request_fails_alone(generator):
    long = generator.generate(chat(max_tokens=300, temperature=0))
    assert isinstance(await anext(long), Started)
    bad = generator.generate(chat(messages=[], max_tokens=5))  # the template reads messages[0]
    with pytest.raises(InvalidRequestError) as info:
        await asyncio.wait_for(anext(bad), HANG)  # raised instead of Started
    assert info.value.param == "messages"
    rest = [e async for e in long]
    assert isinstance(rest[-1], Finished) and rest[-1].completion_tokens > 0


async def test_empty_text_prompt_starts_a_document(generator):
    started, deltas, finished = await run(generator, text("", max_tokens=3, temperature=0))
    assert started.prompt_tokens == 1 and finished.completion_tokens == 3


# ---- scheduling -----------------------------------------------------------------------
async def test_short_request_finishes_while_long_prompt_prefills(engine_entry):
    order: list[tuple[str, str]] = []
    # small chunks (about 470 prefill steps for the long prompt) leave a busy machine time to deliver
    # the second request while the first still prefills
    generator = await load_generator(engine_entry, prefill_chunk=4)

    async def record(name, request):
        async for event in generator.generate(request):
            order.append((name, type(event).__name__))

    # sent back to back: the short one reaches the runner during the long one's first chunks, and
    # finishes before the long one's first token, never behind the whole prompt
    long = text(LONG_TEXT, max_tokens=4, temperature=0)  # ~1890 tokens of the 2048
    try:
        await asyncio.wait_for(asyncio.gather(record("long", long), record("short", chat(max_tokens=4))), HANG)
    finally:
        await generator.close()
    assert order.index(("short", "Finished")) < order.index(("long", "TextDelta")), order


@pytest.mark.parametrize("how", ["aclose", "task.cancel"])
async def test_leaving_early_frees_the_slot(generator, how):
    events = generator.generate(chat(temperature=0, frequency_penalty=0.1))  # up to the whole context
    consumer = asyncio.create_task(anext(events))
    assert isinstance(await consumer, Started)
    assert isinstance(await anext(events), TextDelta)
    assert (await generator.stats())["active"] == 1
    if how == "aclose":  # what the HTTP layer does when the client goes away
        await events.aclose()
    else:  # a consumer task cancelled while it waits inside the generator for the next event
        while True:
            consumer = asyncio.create_task(anext(events))
            await asyncio.sleep(0)
            if not consumer.done():
                break
            assert isinstance(consumer.result(), TextDelta)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    stats = await generator.stats()  # the runner handles the cancel before this question
    assert (stats["active"], stats["queued"]) == (0, 0)


async def test_killed_runner_fails_requests_and_restarts(engine_entry):
    gen = await load_generator(engine_entry)
    try:
        first_pid = gen.pid
        streams = [gen.generate(chat(temperature=0, frequency_penalty=0.1)) for _ in range(2)]
        for stream in streams:
            assert isinstance(await anext(stream), Started)
        os.kill(gen.pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # SIGTERM is TerminateProcess on Windows
        for stream in streams:
            with pytest.raises(BackendError):
                await asyncio.wait_for(_drain(stream), HANG)
        started, _, finished = await run(gen, chat(max_tokens=3, temperature=0))
        assert finished.completion_tokens == 3
        assert gen.pid not in (None, first_pid)
    finally:
        await gen.close()


async def test_unloading_ends_requests_in_flight(engine_entry):
    gen = await load_generator(engine_entry)
    stream = gen.generate(chat(temperature=0, frequency_penalty=0.1))
    assert isinstance(await anext(stream), Started)
    await gen.close()
    with pytest.raises(BackendError, match="unloaded"):
        await asyncio.wait_for(_drain(stream), HANG)
    with pytest.raises(BackendError, match="unloaded"):
        await run(gen, chat(max_tokens=1))


async def _drain(stream):
    async for event in stream:
        assert not isinstance(event, Finished), "the runner finished before it was killed"


async def test_broken_model_folder_raises_backend_error(tmp_path):
    (tmp_path / "genai_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(BackendError, match="failed to load"):
        await load_generator(ModelEntry("broken", ModelConfig(), tmp_path, {"task": "chat"}))


# ---- model facts ------------------------------------------------------------------------
async def test_devices(engine_entry):
    assert resolve_device("auto") == "cpu"
    with pytest.raises(NotSupportedError) as info:
        await load_generator(engine_entry, device="tpu")
    assert "cpu" in info.value.message


def test_threads_default_to_physical_cores():
    block = "processor\t: {}\nphysical id\t: {}\ncore id\t\t: {}\n\n"
    smt = "".join(block.format(i, i // 4, i % 2) for i in range(8))  # 2 packages x 2 cores x 2 threads
    assert count_cores(smt) == 4
    assert count_cores("processor\t: 0\nBogoMIPS\t: 50.00\n") is None


def test_fim_tokens(generator):
    assert generator.fim_tokens is None  # the demo vocabulary has none
    assert generator.device == "cpu"
    vocab = {"<fim_prefix>": 5, "<fim_suffix>": 6, "<fim_middle>": 7, "<|fim_prefix|>": 8}
    assert find_fim_tokens(lambda t: vocab.get(t, -1)) == ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")


def test_deltas_sent_together_are_merged_per_request():
    batch = [
        (1, TextDelta("a", (1,))),
        (2, TextDelta("x", (9,))),
        (1, TextDelta("b", (2,))),
        (1, Finished("stop", 3, 3)),
        (2, TextDelta("y", (8,))),
    ]
    assert merge_deltas(batch) == [
        (1, TextDelta("ab", (1, 2))),
        (2, TextDelta("xy", (9, 8))),
        (1, Finished("stop", 3, 3)),
    ]
