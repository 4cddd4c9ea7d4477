"""`pip install 'ortserve[cuda]'` on a machine without a GPU: a venv of its own (built once per session under pytest's
tmp, removed after), holding onnxruntime-genai-cuda, onnxruntime-gpu and NVIDIA's CUDA 13 wheels, no torch.

It checks what a user of the extra meets before their GPU does: the install is consistent (`pip check`, no CPU
runtime beside the CUDA one), CUDA's libraries load after ortserve's preload (without it onnxruntime-genai's CUDA
library fails on libcublasLt.so.13), and ortserve says what is missing instead of trusting the runtimes' own
answers: `info` reports the CUDA runtime present and no NVIDIA driver, `serve --device cuda` refuses with that
reason, `auto` serves on the CPU, with a warning that says why, and `convert` does not claim to validate a CUDA
build it could not run."""

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

ROOT = Path(__file__).resolve().parents[2]
BIN = "Scripts" if sys.platform == "win32" else "bin"
NO_DRIVER = "there is no NVIDIA driver"
CHAT, EMBEDDER = "tiny-llama", "all-minilm"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform not in ("linux", "win32"), reason="NVIDIA's CUDA wheels: Linux and Windows"),
]


def _driver_here() -> bool:
    import ctypes

    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.fixture
def no_driver() -> None:
    """The answers of a machine without an NVIDIA driver (CI's): where a driver is, CUDA runs and they differ.
    The install and the libraries are checked on every machine."""
    if _driver_here():
        pytest.skip("checks what a machine without an NVIDIA driver answers; this one has a driver")


@pytest.fixture(scope="session")
def cuda_venv(tmp_path_factory) -> Path:
    """A venv with `ortserve[cuda]` installed from this checkout (about 2.5 GB of NVIDIA's wheels, so it is removed
    when the session ends)."""
    root = tmp_path_factory.mktemp("cuda-venv")
    venv = root / "venv"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    source = shutil.copytree(  # pip builds in the source folder: a copy keeps build/ out of the checkout
        ROOT, root / "src", ignore=shutil.ignore_patterns(".venv", ".tox", ".git", "models", "*.egg-info", "build")
    )
    installed = subprocess.run(
        [
            str(venv / BIN / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{source}[cuda]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, f"pip install ortserve[cuda] failed:\n{installed.stdout}\n{installed.stderr}"
    print(f"\nthe ortserve[cuda] venv was built in {time.perf_counter() - started:.0f} s")
    yield venv
    shutil.rmtree(root, ignore_errors=True)


def _python(venv: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / BIN / "python"), "-c", code], capture_output=True, text=True, timeout=300, cwd=venv.parent
    )


def _ortserve(venv: Path, home: Path, *argv: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    return subprocess.run(
        [str(venv / BIN / "ortserve"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=venv.parent,
        env={**environment, "ORTSERVE_HOME": str(home)},
    )


def test_the_extra_installs_consistently_and_without_the_cpu_runtime(cuda_venv):
    checked = subprocess.run(
        [str(cuda_venv / BIN / "python"), "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = _python(
        cuda_venv,
        "import json, importlib.metadata as m; "
        "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))",
    )
    names = set(json.loads(listed.stdout))
    assert {"onnxruntime-genai-cuda", "onnxruntime-gpu", "nvidia-cublas", "nvidia-cuda-runtime"} <= names
    assert {"nvidia-cudnn-cu13", "nvidia-curand", "nvidia-cufft"} <= names
    assert not names & {"onnxruntime", "onnxruntime-genai", "torch"}, names  # one runtime, and serving needs no torch


LOADS = """
import ctypes, ctypes.util, json
from ortserve.core import cuda, devices
own = cuda.runtime_library("generation")
try:
    ctypes.CDLL(str(own))
    before = None
except OSError as exc:
    before = str(exc)
failed = cuda.preload()
problems = {runtime: cuda.library_problem(runtime) for runtime in ("generation", "embeddings")}
devices.load_libraries("cuda", "generation")  # what the runner does; raises naming the library when one is missing
devices.load_libraries("cuda", "embeddings")  # what a CUDA embedding model does
ctypes.CDLL(str(own))
print(json.dumps({"before": before, "system_cublas": ctypes.util.find_library("cublasLt"), "failed": failed,
                  "problems": problems, "folders": [str(f) for f in cuda.library_folders()]}))
"""


def test_cuda_libraries_load_after_the_preload(cuda_venv):
    done = _python(cuda_venv, LOADS)
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)
    assert found["failed"] == {} and found["problems"] == {"generation": None, "embeddings": None}, found
    assert any(Path(f).parent.name == "cu13" for f in found["folders"]), found[
        "folders"
    ]  # NVIDIA's wheels, not a system CUDA
    if found["system_cublas"] is None and sys.platform == "linux":  # nothing else on the loader's paths: it needs us
        assert "libcublasLt.so.13" in found["before"], found


def test_convert_validates_a_cuda_build_only_where_cuda_runs(no_driver, cuda_venv):
    """`convert --device cuda` validates its build by running it: here it says why it cannot (not
    og.is_cuda_available(), which is true in this wheel), and an embedding build is checked on the CPU, saying so."""
    code = (
        "import json; from ortserve.conversion.validate_chat import cannot_run; "
        "from ortserve.conversion.validate_embedding import providers_for; "
        "print(json.dumps([cannot_run('cuda'), cannot_run('cpu'), providers_for('cuda')]))"
    )
    done = _python(cuda_venv, code)
    assert done.returncode == 0, done.stderr
    chat, cpu, embedding = json.loads(done.stdout)
    assert chat.startswith(f"the CUDA runtime is installed and its libraries load, but {NO_DRIVER}"), chat
    assert cpu is None and embedding == ["CPUExecutionProvider"]


def test_info_reports_the_cuda_runtime_present_and_no_driver(no_driver, cuda_venv, tmp_path):
    done = _ortserve(cuda_venv, tmp_path, "info", "--no-server", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    check = report["cuda"]
    assert check["libraries"] == {} and check["failed"] is None and check["gpus"] == 0
    assert check["driver"].startswith(NO_DRIVER)
    assert "CUDAExecutionProvider" in report["onnxruntime"]["providers"]  # what onnxruntime says without a GPU ...
    assert "cuda" in report["onnxruntime_genai"]["devices"]  # ... and og.is_cuda_available()
    for runtime in ("generation", "embeddings"):  # ... is not what ortserve goes by
        why = report["devices"]["cuda"][runtime]
        assert why.startswith(f"the CUDA runtime is installed and its libraries load, but {NO_DRIVER}"), why
    assert report["auto"]["chat, build unknown"]["device"] == "cpu"
    assert report["auto"]["embeddings"]["device"] == "cpu"
    assert report["auto"]["embeddings"]["missed"].startswith("cuda: the CUDA runtime is installed")
    assert report["auto"]["chat built for cuda"]["device"] is None  # paged attention: no CPU fallback
    text = _ortserve(cuda_venv, tmp_path, "info", "--no-server")
    assert "CUDA runtime libraries:         load" in text.stdout
    assert f"NVIDIA driver:                  not usable: {NO_DRIVER}" in text.stdout, text.stdout


def test_serve_device_cuda_refuses_saying_why(no_driver, cuda_venv, tmp_path):
    done = _ortserve(cuda_venv, tmp_path, "serve", "--device", "cuda", "--no-bootstrap", "--port", "0")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: device 'cuda' cannot run models here: the CUDA runtime is installed" in done.stderr
    assert NO_DRIVER in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "models").exists()  # refused before touching the store


@pytest.fixture(scope="session")
def cuda_home(tmp_path_factory, store_home) -> Path:
    """An ORTSERVE_HOME with the session's tiny chat model (built for the CPU) and all-MiniLM-L6-v2, each also
    copied under a name whose settings ask for CUDA."""
    from ortserve.core.store import ModelStore

    home = tmp_path_factory.mktemp("cuda-home")
    for name in (CHAT, EMBEDDER):
        shutil.copytree(store_home / "models" / name, home / "models" / name)
    store = ModelStore(home / "models")
    for name in (CHAT, EMBEDDER):
        store.copy(name, f"{name}-cuda")
        store.write_config(f"{name}-cuda", store.get(f"{name}-cuda").config.model_copy(update={"device": "cuda"}))
    return home


def _wait_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except urllib.error.HTTPError:  # it answers: serving
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"not serving after 60 s:\n{log.read_text(errors='replace')}")


def test_serve_auto_runs_on_the_cpu_and_a_model_set_to_cuda_says_why(no_driver, cuda_venv, cuda_home, tmp_path):
    """onnxruntime-genai-cuda and onnxruntime-gpu run models on the CPU too: under auto that is where they run, with a
    warning at start; a model whose settings ask for CUDA is a 501 that names the missing driver."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    log, url = tmp_path / "serve.log", f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(cuda_venv / BIN / "ortserve"), "serve", "--no-bootstrap", "--port", str(port)],
            env={**environment, "ORTSERVE_HOME": str(cuda_home)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_serving(url, process, log)
        chat = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
        answered = httpx.post(f"{url}/v1/chat/completions", json={"model": CHAT, **chat}, timeout=120)
        assert answered.status_code == 200, answered.text
        assert answered.json()["usage"]["completion_tokens"] >= 1
        embedded = httpx.post(f"{url}/v1/embeddings", json={"model": EMBEDDER, "input": ["Hello"]}, timeout=120)
        assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384, embedded.text
        assert httpx.get(f"{url}/health", timeout=10).json()["devices"] == {CHAT: "cpu", EMBEDDER: "cpu"}
        refused = [
            httpx.post(f"{url}/v1/chat/completions", json={"model": f"{CHAT}-cuda", **chat}, timeout=120),
            httpx.post(f"{url}/v1/embeddings", json={"model": f"{EMBEDDER}-cuda", "input": ["Hello"]}, timeout=120),
        ]
        for response, runtime in zip(refused, ("generation", "embeddings"), strict=True):
            assert response.status_code == 501, response.text
            message = response.json()["error"]["message"]
            assert message.startswith(f"device 'cuda' is not available for {runtime}: the CUDA runtime is installed")
            assert NO_DRIVER in message
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = log.read_text(errors="replace")
    assert "warning: device auto: models run on the CPU here; cuda: the CUDA runtime is installed" in output, output
    assert "Traceback" not in output
