"""Generation through a real server: parity with transformers, isolation between
models while a long prefill runs, and recovery when a model runner dies."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import run_cli
from tests.e2e.conftest import start_server, stop_server

SLOW = "slow-llama"  # big enough that a long prompt's prefill takes a while on 2 cores
LONG_PROMPT_WORDS = 2500


@pytest.fixture(scope="module")
def gen_server(tmp_path_factory, chat_store_home, checkpoints):
    from ortserve.conversion.demo import build_tiny_chat_checkpoint

    home = tmp_path_factory.mktemp("gen-home")
    shutil.copytree(chat_store_home, home, dirs_exist_ok=True)
    ckpt = build_tiny_chat_checkpoint(
        tmp_path_factory.mktemp("slow") / SLOW,
        "llama",
        hidden_size=512,
        num_layers=8,
        context_length=8192,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    assert run_cli(home, "convert", str(ckpt), "--name", SLOW, "--precision", "int4", "--quiet", "--no-validate") == 0
    server = start_server(home, home / "server.log")
    yield server
    stop_server(server)


def _hf_greedy_text(checkpoint: Path, messages: list[dict], max_new_tokens: int) -> tuple[str, int]:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)[0, len(ids) :]
    return tok.decode(out, skip_special_tokens=True), len(ids)


@pytest.mark.parametrize("name,arch", [("tiny-llama", "llama"), ("tiny-qwen", "qwen2")])
def test_greedy_text_equals_transformers(gen_server, checkpoints, name, arch):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What is the weather in Paris today?"},
    ]
    expected, prompt_tokens = _hf_greedy_text(checkpoints[arch], messages, 20)
    with gen_server.client(max_retries=0) as client:
        reply = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=20)
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.choices[0].message.content == expected


async def test_health_and_other_models_answer_during_a_long_prefill(gen_server):
    """While SLOW prefills a long prompt, /health and another model's request complete first."""
    events: list[str] = []
    client = gen_server.async_client(max_retries=0, timeout=300)
    warm = [
        client.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        for m in (SLOW, "tiny-qwen")
    ]
    await asyncio.gather(*warm)  # both runners are loaded before the race starts
    long_prompt = " ".join(["weather"] * LONG_PROMPT_WORDS)

    async def long_request():
        stream = await client.chat.completions.create(
            model=SLOW, messages=[{"role": "user", "content": long_prompt}], max_tokens=4, temperature=0, stream=True
        )
        async for chunk in stream:  # the role chunk comes at once; the rest only after the whole prefill
            if chunk.choices and chunk.choices[0].finish_reason is not None:
                events.append("slow:finished")
        await stream.close()

    async def others():
        await asyncio.sleep(0.05)  # let the long request reach the runner
        async with httpx.AsyncClient(base_url=gen_server.base_url) as http:
            assert (await http.get("/health")).status_code == 200
            events.append("health")
        reply = await client.chat.completions.create(
            model="tiny-qwen", messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0
        )
        assert reply.usage.completion_tokens >= 1
        events.append("other-model")

    await asyncio.gather(long_request(), others())
    await client.close()
    assert events == ["health", "other-model", "slow:finished"]


def _runner_pids(server_pid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == server_pid and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the runner process through /proc")
def test_a_dead_runner_fails_its_requests_then_restarts(gen_server):
    with gen_server.client(max_retries=0, timeout=120) as client:
        _kill_runner_mid_stream(gen_server, client)


def _kill_runner_mid_stream(gen_server, client):
    for model in (SLOW, "tiny-qwen"):  # both runners loaded, whichever tests ran before
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    before = set(_runner_pids(gen_server.process.pid))
    stream = client.chat.completions.create(
        model=SLOW,
        messages=[{"role": "user", "content": "go"}],
        max_tokens=4000,
        extra_body={"min_tokens": 4000},
        stream=True,
    )
    chunks = iter(stream)
    next(chunks)  # the role chunk: the generation runs now
    runners = set(_runner_pids(gen_server.process.pid))
    assert len(runners) >= 2 and before == runners  # one runner per loaded model
    # the slow model's runner holds the most memory (resident pages in /proc/PID/statm)
    slow_pid = max(runners, key=lambda pid: int(Path(f"/proc/{pid}/statm").read_text().split()[1]))
    os.kill(slow_pid, signal.SIGKILL)
    with stream, pytest.raises(openai.APIError) as raised:
        for _ in chunks:
            pass
    assert "runner" in str(raised.value).lower() or "model" in str(raised.value).lower()
    # the server keeps serving: a fresh runner is started for the next request
    reply = client.chat.completions.create(model=SLOW, messages=[{"role": "user", "content": "again"}], max_tokens=3)
    assert reply.usage.completion_tokens >= 1
    assert slow_pid not in _runner_pids(gen_server.process.pid)


def test_served_context_defaults_to_the_server_num_ctx(gen_server):
    """SLOW was built with an 8,192-token context; without a per-model num_ctx the server serves 4,096."""
    with gen_server.client(max_retries=0) as client, pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=SLOW, messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    assert "maximum context length is 4096 tokens" in raised.value.message
