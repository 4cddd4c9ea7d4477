"""Devices through a real server: /health names each loaded model's device, `ortserve info --url` reads it,
and a model configured for a device this machine lacks is an OpenAI-shaped 501 that says what is missing."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from ortserve.core import devices
from tests.e2e.conftest import CHAT_MODEL, run_ortserve

CUDA_NAME = "tiny-llama:cuda"  # a cp of CHAT_MODEL whose settings ask for CUDA
NO_CUDA = devices.unavailable("cuda", devices.detect(), "generation") is not None  # as CI: Linux, CPU wheels


@pytest.fixture(scope="module")
def loaded(server):
    server.client().chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    return server


def test_health_names_each_loaded_models_device(loaded):
    body = httpx.get(f"{loaded.base_url}/health", timeout=10).json()
    assert CHAT_MODEL in body["models_loaded"]
    assert body["devices"][CHAT_MODEL] == "cpu"  # built for the CPU, so "auto" keeps it there on any machine


def test_info_reads_the_devices_of_a_running_server(loaded):
    done = run_ortserve(loaded.home, "info", "--url", loaded.base_url, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["server"]["status"] == "ok"
    assert report["server"]["devices"][CHAT_MODEL] == "cpu"
    assert report["auto"]["chat built for cpu"]["device"] == "cpu"
    text = run_ortserve(loaded.home, "info", "--url", loaded.base_url)
    assert text.returncode == 0 and f"{CHAT_MODEL}" in text.stdout and "--device auto" in text.stdout


def test_info_without_a_server_says_so(server_home, tmp_path):
    done = run_ortserve(server_home, "info", "--url", "http://127.0.0.1:9")  # the discard port: nobody answers
    assert done.returncode == 0 and "no server answers" in done.stdout


@pytest.mark.skipif(not NO_CUDA, reason="this machine can run CUDA")
def test_a_model_set_to_a_missing_device_is_a_501(server):
    store = server.store  # shared with the other e2e tests: the name goes again at the end
    store.copy(CHAT_MODEL, CUDA_NAME)
    try:
        store.write_config(CUDA_NAME, store.get(CUDA_NAME).config.model_copy(update={"device": "cuda"}))
        with pytest.raises(openai.APIStatusError) as info:
            server.client().chat.completions.create(model=CUDA_NAME, messages=[{"role": "user", "content": "hi"}])
    finally:
        store.remove(CUDA_NAME)
    assert info.value.status_code == 501
    error = info.value.body
    assert error["code"] == "not_supported"
    assert "device 'cuda' is not available for generation" in error["message"]
    assert "onnxruntime-genai-cuda" in error["message"]
