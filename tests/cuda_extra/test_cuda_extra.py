"""`pip install 'ortserve[cuda]'` on a machine without a GPU: a venv of its own (built once per session under pytest's
tmp, removed after), holding onnxruntime-genai-cuda, onnxruntime-gpu and NVIDIA's CUDA 13 wheels, no torch.

It checks what a user of the extra meets before their GPU does: the install is consistent (`pip check`, no CPU
runtime beside the CUDA one), CUDA's libraries load after ortserve's preload (without it onnxruntime-genai's CUDA
library fails on libcublasLt.so.13), and ortserve says what is missing instead of trusting the runtimes' own
answers: `info` reports the CUDA runtime present and no NVIDIA driver, `serve --device cuda` refuses with that
reason, and `auto` runs on the CPU, with a warning that says why."""

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


@pytest.fixture(scope="session")
def cuda_venv(tmp_path_factory) -> Path:
    """A venv with `ortserve[cuda]` installed from this checkout (about 2.5 GB of NVIDIA's wheels, so it is removed
    when the session ends)."""
    if _driver_here():
        pytest.skip("this tier checks a machine without an NVIDIA driver; this one has one")
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


def test_info_reports_the_cuda_runtime_present_and_no_driver(cuda_venv, tmp_path):
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


def test_serve_device_cuda_refuses_saying_why(cuda_venv, tmp_path):
    done = _ortserve(cuda_venv, tmp_path, "serve", "--device", "cuda", "--no-bootstrap", "--port", "0")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: device 'cuda' cannot run models here: the CUDA runtime is installed" in done.stderr
    assert NO_DRIVER in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "models").exists()  # refused before touching the store


def test_serve_auto_runs_on_the_cpu_and_says_why(cuda_venv, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(cuda_venv / BIN / "ortserve"), "serve", "--no-bootstrap", "--port", str(port)],
            env={**environment, "ORTSERVE_HOME": str(tmp_path)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except urllib.error.HTTPError:  # it answers: serving
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = log.read_text(errors="replace")
    assert "warning: device auto: models run on the CPU here; cuda: the CUDA runtime is installed" in output, output
    assert "Traceback" not in output
