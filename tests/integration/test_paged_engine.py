"""The og.Engine path (server/engine/engine_scheduler.py, engine_turn.py) on a real model, on the CPU.

A paged-attention model only loads on CUDA, so here the Engine serves the tiny non-paged
`tiny-qwen-int4` model in static batches (onnxruntime-genai 0.18 batches 4 at a time on the CPU).
`EngineScheduler` runs in a thread and is driven through real pipes with the runner's protocol.
References are independent: onnxruntime-genai's `og.Generator` greedy tokens for the same prompt.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

from ortserve.core.store import ModelEntry
from ortserve.server.engine import engine_scheduler, ipc
from ortserve.server.engine.generation import (
    Finished,
    GenerationRequest,
    Guidance,
    Prompt,
    SamplingParams,
    Started,
    TextDelta,
)
from ortserve.server.errors import BackendError, NotSupportedError

pytestmark = pytest.mark.slow

HANG = 60  # seconds: only to turn a hang into a failure
MODEL = "tiny-qwen-int4"


class Client:
    """The server's side of a runner's pipes, synchronous. The runner loads and serves in one thread, as in its
    process (onnxruntime-genai requires every Engine call from the thread that created the Engine)."""

    def __init__(self, folder: Path):
        self.options = ipc.RunnerOptions(num_ctx=None, device="cpu", threads=2, parallel=4, prefill_chunk=128)
        requests_in, self._requests = multiprocessing.Pipe(duplex=False)
        self._events, events_out = multiprocessing.Pipe(duplex=False)
        self.thread = threading.Thread(target=self._serve, args=(folder, requests_in, events_out), daemon=True)
        self.thread.start()
        assert self._events.poll(HANG), "the model did not load"
        kind, self.info = self._events.recv()
        assert kind == ipc.READY, self.info
        self.rid = 0
        self.inbox: dict[int, list] = {}

    def _serve(self, folder: Path, requests_in, events_out) -> None:
        try:
            self.em, info = engine_scheduler.load(folder, self.options)
        except Exception as exc:
            events_out.send((ipc.FAILED, f"{type(exc).__name__}: {exc}"))
            return
        events_out.send((ipc.READY, info))
        engine_scheduler.EngineScheduler(self.em, self.options, requests_in, events_out).serve()

    def send(self, *message) -> None:
        self._requests.send(message)

    def submit(self, request: GenerationRequest) -> int:
        self.rid += 1
        self.inbox[self.rid] = []
        self.send(ipc.GENERATE, self.rid, request)
        return self.rid

    def wait(self, rid: int, until=lambda item: isinstance(item, (Finished, ipc.Failure, dict))) -> list:
        """The items for `rid` up to the first one `until` accepts (default: its Finished, Failure or stats)."""
        while not any(until(item) for item in self.inbox[rid]):
            assert self._events.poll(HANG), "the runner went quiet"
            kind, batch = self._events.recv()
            assert kind == ipc.EVENTS
            for rid_, item in batch:
                self.inbox.setdefault(rid_, []).append(item)
        return self.inbox[rid]

    def close(self) -> None:
        self.send(ipc.SHUTDOWN)
        self.thread.join(HANG)


@pytest.fixture(scope="module")
def folder(chat_store) -> Path:
    return chat_store.get(MODEL).folder


@pytest.fixture(scope="module")
def client(folder):
    c = Client(folder)
    yield c
    c.close()


def generate(client: Client, prompt: str = "hello there", **params) -> tuple[Started, str, list[int], Finished]:
    items = client.wait(client.submit(GenerationRequest("r", Prompt(text=prompt), SamplingParams(**params))))
    if isinstance(items[-1], ipc.Failure):
        raise items[-1].to_exception()
    started, deltas, finished = items[0], items[1:-1], items[-1]
    assert isinstance(started, Started) and isinstance(finished, Finished)
    assert all(isinstance(d, TextDelta) for d in deltas)
    return started, "".join(d.text for d in deltas), [t for d in deltas for t in d.token_ids], finished


@pytest.fixture(scope="module")
def reference(folder):
    """Its own og.Model and tokenizer (the runner's belong to the runner's thread)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    return model, og.Tokenizer(model)


def generator_greedy(reference, prompt: str, n: int) -> list[int]:
    import onnxruntime_genai as og

    model, tokenizer = reference
    ids = np.asarray(tokenizer.encode(prompt), dtype=np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    g = og.Generator(model, params)
    g.append_tokens(ids)
    out: list[int] = []
    while not g.is_done() and len(out) < n:
        g.generate_next_token()
        out.append(int(g.get_next_tokens()[0]))
    return out


def test_loads_on_the_cpu_with_grammars(client):
    assert client.info.device == "cpu"
    assert client.info.guidance_error is None  # the Engine probe generated exactly the probe string
    assert client.em.dynamic is False


def test_greedy_tokens_match_the_generator(client, reference):
    started, text, tokens, finished = generate(client, "hello there", max_tokens=12, temperature=0)
    expected = generator_greedy(reference, "hello there", 12)
    eos = client.em.model.eos_ids
    assert tokens and tokens == [t for t in expected if t not in eos]
    assert finished.completion_tokens == len(expected)
    assert finished.finish_reason == ("stop" if expected[-1] in eos else "length")
    assert started.max_tokens == 12 and finished.prompt_tokens == started.prompt_tokens


def test_more_requests_than_a_static_batch_all_finish_with_their_own_tokens(client, reference):
    prompts = [f"prompt number {i} says" for i in range(7)]  # > 4, the CPU Engine's batch
    rids = [
        client.submit(GenerationRequest(f"r{i}", Prompt(text=p), SamplingParams(max_tokens=6 + i, temperature=0)))
        for i, p in enumerate(prompts)
    ]
    for i, (rid, prompt) in enumerate(zip(rids, prompts, strict=True)):
        items = client.wait(rid)
        tokens = [t for item in items if isinstance(item, TextDelta) for t in item.token_ids]
        expected = [t for t in generator_greedy(reference, prompt, 6 + i) if t not in client.em.model.eos_ids]
        assert tokens and tokens == expected


def test_on_the_cpu_a_request_waits_for_the_running_static_batch(client):
    """Why the CPU keeps the Generator path: without paged attention the Engine batches statically, so a short
    request sent while a long one runs starts only when that batch is done (event order, no timing)."""
    long = client.submit(
        GenerationRequest(
            "long", Prompt(text="tell a long story"), SamplingParams(max_tokens=300, min_tokens=300, temperature=0)
        )
    )
    client.wait(long, until=lambda item: isinstance(item, TextDelta))
    short = client.submit(GenerationRequest("short", Prompt(text="hi"), SamplingParams(max_tokens=3, temperature=0)))
    client.wait(short)
    assert isinstance(client.inbox[long][-1], Finished) and client.inbox[long][-1].completion_tokens == 300
    assert isinstance(client.inbox[short][-1], Finished) and client.inbox[short][-1].completion_tokens == 3


def test_chat_messages_use_the_chat_template(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    items = client.wait(
        client.submit(GenerationRequest("c", Prompt(messages=messages), SamplingParams(max_tokens=4, temperature=0)))
    )
    started, finished = items[0], items[-1]
    assert started.prompt_text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert started.prompt_text.endswith("<|im_start|>assistant\n")
    assert isinstance(finished, Finished) and finished.prompt_tokens == started.prompt_tokens


def test_stop_string_cuts_the_text(client):
    _, full, _, _ = generate(client, "a b c d e f", max_tokens=24, temperature=0)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"no usable stop string in {full!r}"
    _, text, _, finished = generate(client, "a b c d e f", max_tokens=24, temperature=0, stop=(stop,))
    assert text == full[: full.index(stop)]
    assert finished.finish_reason == "stop"


def test_grammar_is_enforced(client):
    guidance = Guidance("regex", "abc[0-9]{2}", param="response_format")
    _, text, _, finished = generate(client, "hello", max_tokens=20, temperature=0, guidance=guidance)
    assert len(text) == 5 and text.startswith("abc") and text[3:].isdigit()
    assert finished.finish_reason == "stop"


def test_a_bad_grammar_is_a_400_naming_its_field(client):
    from ortserve.server.errors import InvalidRequestError

    guidance = Guidance("json_schema", json.dumps({"type": "no-such-type"}), param="response_format.json_schema")
    with pytest.raises(InvalidRequestError) as info:
        generate(client, "hello", max_tokens=5, guidance=guidance)
    assert info.value.param == "response_format.json_schema"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"logprobs": 2}, "logprobs"),
        ({"logit_bias": ((5, 10.0),)}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"seed": 7, "temperature": 0.8}, "seed"),  # a static-batch Engine takes no per-request seed
    ],
)
def test_what_the_engine_cannot_do_is_a_501_naming_the_field(client, params, param):
    with pytest.raises(NotSupportedError) as info:
        generate(client, "hello", max_tokens=3, **params)
    assert info.value.param == param


def test_sampling_without_seed_runs(client):
    _, _, tokens, finished = generate(client, "hello", max_tokens=8, temperature=0.9, top_p=0.9, top_k=20)
    assert finished.completion_tokens == 8 or finished.finish_reason == "stop"
    assert all(0 <= t < client.em.model.vocab_size for t in tokens)


def test_cancel_frees_the_turn(client):
    rid = client.submit(GenerationRequest("long", Prompt(text="go on"), SamplingParams(max_tokens=1500, temperature=0)))
    client.wait(rid, until=lambda item: isinstance(item, TextDelta))  # generating
    client.send(ipc.CANCEL, rid)
    generate(client, "still served", max_tokens=3, temperature=0)
    stats_rid = client.rid = client.rid + 1
    client.inbox[stats_rid] = []
    client.send(ipc.STATS, stats_rid)
    stats = client.wait(stats_rid)[-1]
    assert stats["active"] == 0 and stats["queued"] == 0 and stats["engine"] == "static"
    assert not any(isinstance(item, Finished) for item in client.inbox[rid])  # a dropped request gets no end


def test_budget_zero_finishes_without_generating(client):
    started, text, _, finished = generate(client, "echo me", max_tokens=0)
    assert text == "" and finished.completion_tokens == 0 and finished.finish_reason == "length"
    assert started.prompt_text == "echo me"


# ---- a real --device cuda build: paged attention, picked by the runner, refused off CUDA -----------
@pytest.fixture(scope="module")
def paged_entry(checkpoints, tmp_path_factory) -> ModelEntry:
    """`ortserve convert --device cuda` on this CPU-only machine: the builder runs, validation is skipped."""
    from ortserve.core.store import ModelStore
    from tests.conftest import run_cli

    home = tmp_path_factory.mktemp("paged-home")
    code = run_cli(
        home, "convert", str(checkpoints["qwen2"]), "--name", "tiny-qwen-cuda", "--device", "cuda", "--quiet"
    )
    assert code == 0
    return ModelStore(home / "models").get("tiny-qwen-cuda")


def test_a_cuda_build_has_paged_attention(paged_entry, folder, tmp_path):
    manifest = paged_entry.manifest
    assert manifest["device"] == "cuda" and manifest["precision"] == "fp16"  # paged attention: fp16/bf16 only
    assert manifest["builder_options"]["use_paged_attention"] == "true"
    assert "skipped" in manifest["validation"]  # no CUDA here to run it
    genai = json.loads((paged_entry.folder / "genai_config.json").read_text(encoding="utf-8"))
    assert "block_table" in genai["model"]["decoder"]["inputs"]
    assert engine_scheduler.uses_engine(paged_entry.folder) and not engine_scheduler.uses_engine(folder)
    assert not engine_scheduler.uses_engine(tmp_path)  # no genai_config at all
    assert paged_entry.config.device == "cuda"  # served on what it was built for


async def test_a_cuda_model_asked_for_cuda_without_cuda_is_a_501(paged_entry):
    from ortserve.server.engine import load_generator

    with pytest.raises(NotSupportedError) as info:
        await load_generator(paged_entry, device="cuda")  # decided before any runner starts
    assert "onnxruntime-genai-cuda" in info.value.message


async def test_a_cuda_model_under_auto_without_cuda_is_a_501(paged_entry):
    from ortserve.server.engine import load_generator

    with pytest.raises(NotSupportedError) as info:
        await load_generator(paged_entry, device="auto")  # no CPU fallback for a paged build
    assert "built for cuda" in info.value.message and "onnxruntime-genai-cuda" in info.value.message


async def test_a_paged_model_on_the_cpu_fails_to_load_saying_why(paged_entry):
    from ortserve.server.engine import load_generator

    with pytest.raises(BackendError) as info:
        await load_generator(paged_entry, device="cpu")  # the runner's Engine hook refuses it
    assert "paged attention for CUDA" in info.value.message and "--device cuda" in info.value.message


def test_the_kv_pool_the_server_sizes_is_an_overlay_og_takes(paged_entry):
    """A paged model's KV pool (its share of gpu_memory_budget) reaches onnxruntime-genai as
    engine.dynamic_batching.num_blocks through og.Config.overlay: og accepts it on a real paged build and
    refuses a key it does not know, so a misspelling would show here. The Engine itself needs a GPU."""
    import onnxruntime_genai as og

    from ortserve.server.gpu_memory import KvLayout, engine_overlay

    genai = json.loads((paged_entry.folder / "genai_config.json").read_text(encoding="utf-8"))
    layout = KvLayout.from_genai(genai)
    assert layout.paged and layout.block_size == genai["engine"]["dynamic_batching"]["block_size"]
    overlay = engine_overlay(genai, 64 * layout.bytes_per_block)
    assert overlay == {"engine": {"dynamic_batching": {"num_blocks": 64}}}
    og.Config(str(paged_entry.folder)).overlay(json.dumps(overlay))
    with pytest.raises(RuntimeError):
        og.Config(str(paged_entry.folder)).overlay(json.dumps({"engine": {"dynamic_batching": {"num_blockz": 64}}}))
