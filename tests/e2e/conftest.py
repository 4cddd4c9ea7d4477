"""A real `ortserve serve` in a subprocess, driven over HTTP by the official openai client.

The server serves a private copy of the session's chat fixture store (tests here
may add names and settings to it), bound to 127.0.0.1 on a free port; it is ready
when GET /health answers 200.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from ortserve.core.store import MANIFEST, ModelStore

ROOT = Path(__file__).resolve().parents[2]
CHAT_MODEL = "tiny-llama"
ALIASES = ["llama:tiny", "org/tiny-llama"]  # given to CHAT_MODEL in the server's store
TERSE = "tiny-llama:terse"  # a `cp` of CHAT_MODEL with a configured system prompt
SYSTEM_PROMPT = "You are a terse assistant. Answer in one word."
EMBEDDER = "e2e-embedder"  # task "embedding"
MAX_REQUEST_BYTES = 64 * 1024
BODY_TIMEOUT = 3  # seconds (the default is 30): a stalled body is answered with a 408 that soon


@dataclass
class Server:
    base_url: str  # http://127.0.0.1:PORT
    home: Path
    log: Path
    process: subprocess.Popen

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.home / "models")

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=kwargs.pop("api_key", "unused"), **kwargs)

    def async_client(self, **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=kwargs.pop("api_key", "unused"), **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_home(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    store = ModelStore(target / "models")
    # a model of another task, to check that chat endpoints refuse it (never loaded, so no weights)
    (target / "models" / EMBEDDER).mkdir()
    (target / "models" / EMBEDDER / MANIFEST).write_text(json.dumps({"task": "embedding"}), encoding="utf-8")
    entry = store.get(CHAT_MODEL)
    store.write_config(CHAT_MODEL, entry.config.model_copy(update={"aliases": ALIASES}))
    store.copy(CHAT_MODEL, TERSE)
    terse = store.get(TERSE)
    store.write_config(TERSE, terse.config.model_copy(update={"system": SYSTEM_PROMPT}))
    return target


def start_server(
    home: Path,
    log: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    bootstrap: bool = False,
    ready_timeout: float = 60,
    runner: Path | None = None,
) -> Server:
    """Start a server on a free port; again on another port if something took that one in the meantime.
    `runner`: a script that runs the CLI (tests/e2e/without_torch.py) in place of `-m ortserve.server.cli`."""
    for attempt in range(3):
        try:
            return _start_server(home, log, extra_args, env, bootstrap, ready_timeout, runner)
        except PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    pass


def _start_server(
    home: Path,
    log: Path,
    extra_args: tuple[str, ...],
    env: dict[str, str] | None,
    bootstrap: bool,
    ready_timeout: float,
    runner: Path | None = None,
) -> Server:
    port = _free_port()  # free now; the server binds it a moment later
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    environment.update(
        ORTSERVE_HOME=str(home),
        ORTSERVE_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
        ORTSERVE_BODY_TIMEOUT=str(BODY_TIMEOUT),
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    command = [
        sys.executable,
        *([str(runner)] if runner else ["-m", "ortserve.server.cli"]),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *([] if bootstrap else ["--no-bootstrap"]),
        *extra_args,
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", home, log, process)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            if "address already in use" in output.lower() or "only one usage of each socket address" in output.lower():
                raise PortTaken(output)
            raise RuntimeError(f"the server exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"the server did not become ready in {ready_timeout} s:\n{log.read_text()}")


def run_ortserve(home: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real `ortserve` command in a subprocess, on the store at `home` (as a user runs it beside a server)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    environment.update(ORTSERVE_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "ortserve.server.cli", *argv],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()  # SIGTERM: a graceful shutdown (on Windows, a hard stop)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def server_home(tmp_path_factory, chat_store_home) -> Path:
    return _prepare_home(chat_store_home, tmp_path_factory.mktemp("e2e") / "home")


def stop_server_cleanly(server: Server) -> None:
    """Stop a fixture's server; it must shut down cleanly, having logged no traceback."""
    stop_server(server)
    output = server.log.read_text(errors="replace")
    assert "Traceback" not in output, output
    if sys.platform != "win32":
        assert server.process.returncode == 0, output


@pytest.fixture(scope="session")
def server(server_home, tmp_path_factory):
    """One real server for the e2e session; at the end it must shut down cleanly, having logged no traceback."""
    log = tmp_path_factory.mktemp("e2e-logs") / "server.log"
    server = start_server(server_home, log)
    yield server
    stop_server_cleanly(server)


@pytest.fixture(scope="session")
def fresh_server(tmp_path_factory):
    """`ortserve serve` on an empty store: it sets up the embedded default models (all-minilm, tiny-demo) first,
    as the README's first command does."""
    home = tmp_path_factory.mktemp("fresh-home")
    log = home / "server.log"
    server = start_server(home, log, bootstrap=True, ready_timeout=600)
    yield server
    stop_server(server)


@pytest.fixture
def client(server) -> openai.OpenAI:
    with server.client(max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        yield http


# ---- JavaScript clients (tests/e2e/clients/: openai and ollama from the npm registry) ---------------
CLIENTS = Path(__file__).parent / "clients"


@pytest.fixture(scope="session")
def node_clients(request, tmp_path_factory):
    """A folder with tests/e2e/clients/ and its node_modules: npm installs once per package.json version."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("the JavaScript client test needs Node.js 18+ and npm on PATH (see README, Tests)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert int(version.lstrip("v").split(".")[0]) >= 18, f"Node.js {version} is too old for the openai client"
    digest = hashlib.sha256((CLIENTS / "package.json").read_bytes()).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir(f"ortserve-node-clients-{digest}") if cache else tmp_path_factory.mktemp("node-clients")
    done = folder / ".installed"
    if not done.is_file():
        shutil.copy(CLIENTS / "package.json", folder / "package.json")
        installed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert installed.returncode == 0, f"npm install failed:\n{installed.stdout}\n{installed.stderr}"
        done.write_text(version, encoding="utf-8")
    for script in CLIENTS.glob("*.mjs"):
        shutil.copy(script, folder / script.name)  # ES modules find node_modules beside them
    return node, folder


def vision_messages(image_url: str) -> list[dict]:
    """The messages of Ollama's OpenAI vision example, as its docs write them (the image URL aside)."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What's in this image?"},
                {"type": "image_url", "image_url": image_url},
            ],
        }
    ]
