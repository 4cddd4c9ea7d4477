"""The standalone desktop bundle: packaging/build_bundle.py builds it with PyInstaller (once per session), then
the bundled `ortserve serve` runs from a folder outside the checkout with no Python on PATH, on a store
holding the session's tiny chat model and all-MiniLM-L6-v2, and answers a chat completion (in its spawned
runner process) and an embedding over HTTP; the bundled `ortserve pull` fetches from the tests' local hub."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ortserve.core.store import ModelStore
from tests.conftest import CHAT_REPO, EMBEDDING_REPO

ROOT = Path(__file__).resolve().parents[2]
CHAT, EMBEDDER = "tiny-llama", "all-minilm"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The built bundle's folder (ortserve and _internal/), as `python packaging/build_bundle.py` leaves it."""
    out = tmp_path_factory.mktemp("bundle-build")
    started = time.perf_counter()
    built = subprocess.run(
        [
            sys.executable,
            str(ROOT / "packaging" / "build_bundle.py"),
            "--dist",
            str(out / "dist"),
            "--work",
            str(out / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, f"the bundle did not build:\n{built.stdout}\n{built.stderr}"
    print(f"\n{built.stdout.strip().splitlines()[-1]} (measured here: {time.perf_counter() - started:.0f} s)")
    return out / "dist" / "ortserve"


@pytest.fixture(scope="session")
def bundle_home(tmp_path_factory, store_home) -> Path:
    """An ORTSERVE_HOME with the session's tiny chat model and the embedding model, nothing else."""
    home = tmp_path_factory.mktemp("bundle-home")
    for name in (CHAT, EMBEDDER):
        shutil.copytree(store_home / "models" / name, home / "models" / name)
        settings = store_home / "models" / f"{name}.toml"
        if settings.is_file():
            shutil.copy(settings, home / "models" / settings.name)
    return home


@pytest.fixture(scope="session")
def outside(bundle, tmp_path_factory) -> Path:
    """The bundle's executable in a copy outside the checkout."""
    folder = shutil.copytree(bundle, tmp_path_factory.mktemp("outside") / "ortserve")
    assert ROOT not in folder.parents
    return folder / ("ortserve.exe" if sys.platform == "win32" else "ortserve")


def no_python_environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    """A bare environment whose PATH holds no python (an empty folder)."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir(exist_ok=True)
    environment = {"PATH": str(empty_bin), "HOME": str(tmp_path), **variables}
    if sys.platform == "win32":
        environment["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    assert shutil.which("python", path=environment["PATH"]) is None
    assert shutil.which("python3", path=environment["PATH"]) is None
    return environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the bundled server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the bundled server was not ready in {timeout} s:\n{log.read_text()}")


def test_bundle_serves_chat_and_embeddings_without_python(bundle, outside, bundle_home, tmp_path):
    # the bundle leaves serving's heavy conversion stack out
    internal = bundle / "_internal"
    assert not (internal / "torch").exists() and not (internal / "transformers").exists()
    environment = no_python_environment(tmp_path, ORTSERVE_HOME=str(bundle_home))
    port, log = _free_port(), tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(outside), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-bootstrap"],
            cwd=outside.parent,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        chat = _post(
            f"{url}/v1/chat/completions",
            {"model": CHAT, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0},
        )
        assert chat["object"] == "chat.completion" and chat["model"] == CHAT
        assert chat["usage"]["completion_tokens"] >= 1 and isinstance(chat["choices"][0]["message"]["content"], str)
        embedded = _post(f"{url}/v1/embeddings", {"model": EMBEDDER, "input": ["Hello", "World"]})
        vectors = [item["embedding"] for item in embedded["data"]]
        assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)
        assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-3  # normalized, as all-MiniLM-L6-v2 pools
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output
    assert f"loading model '{CHAT}'" in output  # its runner started from the frozen executable


def test_bundle_pulls_from_a_hub(outside, local_hub, tmp_path):
    home = tmp_path / "home"
    hub = {"HF_ENDPOINT": local_hub.url, "HF_HOME": str(home / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    environment = no_python_environment(tmp_path, ORTSERVE_HOME=str(home), **hub)
    for reference in (CHAT_REPO, EMBEDDING_REPO):  # each loaded and smoke-tested before it is registered
        pulled = subprocess.run(
            [str(outside), "pull", reference, "--quiet"],
            cwd=outside.parent,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    tasks = {entry.name: entry.manifest["task"] for entry in ModelStore(home / "models").entries()}
    assert sorted(tasks.values()) == ["chat", "embedding"], tasks
