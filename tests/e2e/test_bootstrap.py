"""`ortserve serve` on an empty store sets up the embedded default models, then serves them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import start_server, stop_server


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("fresh-home")
    log = home / "server.log"
    server = start_server(home, log, bootstrap=True, ready_timeout=600)
    yield server
    stop_server(server)


def test_empty_store_gets_the_default_models(fresh_server):
    output = fresh_server.log.read_text()
    assert "empty model store" in output and "'all-minilm' is ready" in output and "'tiny-demo' is ready" in output
    names = {m.id for m in fresh_server.client().models.list()}
    assert {"all-minilm", "tiny-demo", "demo"} <= names
    entry = fresh_server.store.get("tiny-demo")
    assert entry.manifest["validation"]["greedy_match"] == "3/3"
    assert fresh_server.store.get("all-minilm").manifest["task"] == "embedding"


def test_demo_chat_model_answers(fresh_server):
    reply = fresh_server.client().chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    assert reply.model == "demo" and reply.usage.completion_tokens >= 1
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/PID/maps")
def test_the_serving_process_does_not_keep_torch(fresh_server):
    # the setup converted with torch in a child process; the server itself never loaded libtorch
    maps = Path(f"/proc/{fresh_server.process.pid}/maps").read_text()
    assert "python" in maps and "libtorch" not in maps
