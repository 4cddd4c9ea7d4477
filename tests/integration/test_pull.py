"""`ortserve pull` against a local hub (tests/local_hub.py, `HF_ENDPOINT` pointing at it): the real CLI in a
subprocess (huggingface_hub reads its endpoint and offline switch when imported), real downloads into a
fresh Hugging Face cache, real onnxruntime(-genai) smoke runs. Nothing reaches huggingface.co."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ortserve.core.store import ModelStore
from tests.conftest import BARE_REPO, BROKEN_REPO, CHAT_REPO, CHAT_VARIANTS, EMBEDDING_REPO
from tests.local_hub import cli_command, pull_cli

CPU_BUILD, CUDA_BUILD, _ = CHAT_VARIANTS


def one_line_error(result) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def assert_nothing_added(home: Path) -> None:
    models = home / "models"
    left = [p.name for p in models.iterdir()] if models.exists() else []
    assert left == [], left  # no model, no settings file, no staging folder


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def test_list_shows_the_variants_and_the_pick(local_hub, home):
    result = pull_cli(home, local_hub.url, "pull", CHAT_REPO, "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{CHAT_REPO} at {local_hub.repos[CHAT_REPO].sha[:12]}: onnxruntime-genai")
    rows = {line.split()[0]: line.split() for line in lines[2:] if line and not line.startswith("*")}
    assert set(rows) == set(CHAT_VARIANTS)
    assert [rows[v][1] for v in CHAT_VARIANTS] == ["cpu", "cuda", "dml"]
    assert rows[CPU_BUILD][-1] == "*" and rows[CUDA_BUILD][-1] != "*"  # this machine has no CUDA
    assert rows[CPU_BUILD][2] == "int4" and rows[CPU_BUILD][4] in ("KB", "MB")
    assert_nothing_added(home)  # a listing downloads nothing


def test_pull_takes_the_build_for_this_device(local_hub, home):
    before = len(local_hub.requests)
    result = pull_cli(home, local_hub.url, "pull", CHAT_REPO)
    assert result.returncode == 0, result.stderr
    assert "==> download" in result.stderr and "done in" in result.stderr
    entry = ModelStore(home / "models").get("tiny-chat")  # the repository's name without "-onnx"
    manifest = entry.manifest
    assert manifest["source"] == CHAT_REPO and manifest["revision"] == local_hub.repos[CHAT_REPO].sha
    assert manifest["variant"] == CPU_BUILD and manifest["validated"] is False
    assert manifest["device"] == "cpu" and manifest["task"] == "chat"
    assert manifest["smoke"] == {"generated_tokens": 2}
    fetched = {path for method, path, _ in local_hub.requests[before:] if method == "GET" and "/resolve/" in path}
    assert fetched and all(f"/{CPU_BUILD}/" in path for path in fetched)  # that folder only
    again = pull_cli(home, local_hub.url, "pull", CHAT_REPO)
    assert "already exists" in one_line_error(again)


def test_a_named_variant_for_another_device(local_hub, home):
    sha = local_hub.repos[CHAT_REPO].sha
    result = pull_cli(
        home, local_hub.url, "pull", f"{CHAT_REPO}:cuda-int4-rtn-block-32", "--name", "tiny-cuda", "--revision", sha
    )
    assert result.returncode == 0, result.stderr
    entry = ModelStore(home / "models").get("tiny-cuda")
    assert entry.manifest["variant"] == CUDA_BUILD and entry.manifest["device"] == "cuda"
    assert "smoke" not in entry.manifest  # a CUDA build is not loaded on a machine without CUDA
    assert entry.config.device == "cuda"
    unknown = pull_cli(home, local_hub.url, "pull", f"{CHAT_REPO}:cpu-fp32")
    assert "has no variant 'cpu-fp32'" in one_line_error(unknown) and CPU_BUILD in unknown.stderr


def test_sentence_transformers_onnx(local_hub, home, store):
    from ortserve.core.encoder import embed_texts, load_tokenizer

    result = pull_cli(home, local_hub.url, "pull", EMBEDDING_REPO)
    assert result.returncode == 0, result.stderr
    pulled = ModelStore(home / "models").get("all-minilm-l6-v2")
    converted = store.get("all-minilm")
    keys = ("task", "pooling", "normalize", "max_seq_length", "dimensions", "inputs", "output", "lowercase")
    assert {k: pulled.manifest[k] for k in keys} == {k: converted.manifest[k] for k in keys}
    assert pulled.manifest["variant"] == "model" and pulled.manifest["precision"] == "fp32"
    assert pulled.manifest["validated"] is False
    int8 = pull_cli(home, local_hub.url, "pull", f"{EMBEDDING_REPO}:qint8_avx512", "--name", "minilm-int8", "--quiet")
    assert int8.returncode == 0 and int8.stderr == "", int8.stderr
    assert ModelStore(home / "models").get("minilm-int8").manifest["precision"] == "int8"
    shown = json.loads(pull_cli(home, local_hub.url, "show", "all-minilm-l6-v2").stdout)  # what `show` prints
    assert shown["manifest"]["source"] == EMBEDDING_REPO
    assert shown["manifest"]["revision"] == local_hub.repos[EMBEDDING_REPO].sha

    import onnxruntime as ort

    texts = ["A man is eating food.", "The quick brown fox jumps over the lazy dog."]
    vectors = []
    for entry in (pulled, converted):
        session = ort.InferenceSession(str(entry.folder / "model.onnx"), providers=["CPUExecutionProvider"])
        vectors.append(embed_texts(session, load_tokenizer(entry.folder), texts, pooling="mean", normalize=True))
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


def test_nothing_servable_and_unknown_repositories(local_hub, home):
    bare = one_line_error(pull_cli(home, local_hub.url, "pull", BARE_REPO))
    assert "nothing ortserve can serve" in bare and f"ortserve convert {BARE_REPO}" in bare
    assert "no such model on the hub" in one_line_error(pull_cli(home, local_hub.url, "pull", "ortserve-test/nope"))
    no_revision = pull_cli(home, local_hub.url, "pull", CHAT_REPO, "--revision", "v9")
    assert "no such revision" in one_line_error(no_revision)
    assert_nothing_added(home)


def test_offline_is_one_line_and_adds_nothing(tmp_path, home):
    import socket

    with socket.socket() as s:  # a port nothing listens on: the hub cannot be reached
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = one_line_error(pull_cli(home, closed, "pull", CHAT_REPO))
    assert "cannot reach the Hugging Face hub" in unreachable and closed in unreachable
    offline = one_line_error(pull_cli(home, closed, "pull", CHAT_REPO, HF_HUB_OFFLINE="1"))
    assert "HF_HUB_OFFLINE is set" in offline
    assert_nothing_added(home)


def test_a_dropped_download_resumes_where_it_stopped(local_hub, home):
    # huggingface_hub writes what it received in 10 MiB chunks: cut the 90 MB graph after 25 MiB
    graph = "onnx/model.onnx"
    local_hub.cut_once[graph] = 25 * 2**20
    before = len(local_hub.requests)
    first = pull_cli(home, local_hub.url, "pull", EMBEDDING_REPO, "--name", "resumed")
    if first.returncode != 0:  # the client gave up on the dropped connection: nothing registered, said once
        assert "run the same command again" in one_line_error(first)
        assert_nothing_added(home)
        first = pull_cli(home, local_hub.url, "pull", EMBEDDING_REPO, "--name", "resumed")
    assert first.returncode == 0, first.stderr
    ranges = [r for method, path, r in local_hub.requests[before:] if path.endswith(graph) and method == "GET" and r]
    assert ranges == ["bytes=20971520-"]  # resumed after the two whole chunks, not started over
    pulled = ModelStore(home / "models").get("resumed").folder / "model.onnx"
    assert pulled.read_bytes() == local_hub.repos[EMBEDDING_REPO].files[graph].read_bytes()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_during_the_download_adds_nothing(local_hub, home):
    weights = f"{CPU_BUILD}/model.onnx.data"
    local_hub.stall[weights] = release = threading.Event()
    command, environment = cli_command(home, local_hub.url, "pull", CHAT_REPO)
    before = len(local_hub.requests)
    # Ctrl-C as a terminal delivers it: a runner (tox) may start the tests with SIGINT ignored, and a child
    # inherits that, so the pull would never see the signal
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not any(m == "GET" and p.endswith(weights) for m, p, _ in local_hub.requests[before:]):
            assert time.monotonic() < deadline and process.poll() is None, process.stderr
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        release.set()
        del local_hub.stall[weights]
        if process.poll() is None:  # failed: do not leave it (and its pipes) behind for later tests
            process.kill()
            process.communicate()
    assert process.returncode == 130 and "interrupted (the next pull resumes" in stderr.splitlines()[-1], stderr
    assert_nothing_added(home)


def test_a_build_that_cannot_load_is_not_registered(local_hub, home):
    error = one_line_error(pull_cli(home, local_hub.url, "pull", BROKEN_REPO, "--quiet"))
    assert error.startswith(f"error: {BROKEN_REPO}:.: onnxruntime-genai cannot load it: ")
    assert_nothing_added(home)
