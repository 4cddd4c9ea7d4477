"""What loading CUDA showed, in words (`devices.cuda_problem`), from made-up checks; and the parts of core/cuda.py
that run on any machine. tests/cuda_extra runs the real check in a venv with NVIDIA's wheels."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ortserve.core import cuda, devices
from ortserve.core.cuda import CudaCheck

CUDA = {"onnxruntime-genai-cuda": "0.18.0", "onnxruntime-gpu": "1.31.1"}
NO_DRIVER = "there is no NVIDIA driver (libcuda.so.1: cannot open shared object file)"
NO_CUBLAS = "libcublasLt.so.13 (from nvidia-cublas) does not load: ...; pip install 'ortserve[cuda]' installs it"
GPU = CudaCheck(gpus=1, driver_cuda="13.0")
CRASHED = "the CUDA check failed: its process ended with exit code -11"


def env(check: CudaCheck | None, gpu: bool = False) -> devices.Environment:
    return devices.Environment("linux", "x86_64", CUDA, gpu, cuda=check)


@pytest.mark.parametrize(
    ("check", "runtime", "expected"),
    [
        (GPU, "generation", None),
        (GPU, "embeddings", None),
        (
            CudaCheck(driver=NO_DRIVER),
            "generation",
            f"the CUDA runtime is installed and its libraries load, but {NO_DRIVER}",
        ),
        (
            CudaCheck(driver=NO_DRIVER, libraries={"generation": NO_CUBLAS}),
            "generation",
            f"the CUDA runtime is installed, but {NO_CUBLAS}; and {NO_DRIVER}",
        ),
        (  # the library one runtime misses does not stop the other
            CudaCheck(gpus=1, libraries={"generation": "libcufft.so.12 (from nvidia-cufft) does not load"}),
            "embeddings",
            None,
        ),
        (  # a session that did not run on CUDA, with nothing else to explain it: onnxruntime-genai runs on it too
            CudaCheck(gpus=1, session="onnxruntime's CUDA provider did not start"),
            "embeddings",
            "the CUDA runtime is installed and its libraries load, but onnxruntime's CUDA provider did not start",
        ),
        (
            CudaCheck(gpus=1, session="onnxruntime's CUDA provider did not start"),
            "generation",
            "the CUDA runtime is installed and its libraries load, but onnxruntime's CUDA provider did not start",
        ),
        (CudaCheck(failed=CRASHED), "generation", CRASHED),
    ],
)
def test_what_loading_cuda_showed_in_plain_words(check, runtime, expected):
    assert devices.unavailable("cuda", env(check), runtime) == expected


def test_the_check_decides_over_a_visible_gpu_and_the_runtimes_own_answers():
    # nvidia-smi lists a GPU and og/onnxruntime offer CUDA, but its libraries do not load: auto takes the CPU
    broken = CudaCheck(gpus=1, libraries={"generation": NO_CUBLAS, "embeddings": NO_CUBLAS})
    machine = devices.Environment(
        "linux",
        "x86_64",
        CUDA,
        True,
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
        frozenset({"cpu", "cuda"}),
        broken,
    )
    for runtime in ("generation", "embeddings"):
        assert devices.choose("auto", machine, runtime).device == "cpu"
        assert devices.missed_accelerator(machine, runtime) == f"cuda: the CUDA runtime is installed, but {NO_CUBLAS}"
    with pytest.raises(devices.DeviceUnavailableError, match="nvidia-cublas"):
        devices.choose("cuda", machine, "generation")
    with pytest.raises(devices.DeviceUnavailableError, match="built for cuda, which is not available here"):
        devices.choose("auto", machine, "generation", built_for="cuda")
    # the check found a GPU where nvidia-smi saw none (WSL2 without it on PATH): CUDA it is
    assert devices.choose("auto", env(GPU, gpu=False), "generation").device == "cuda"
    # no check (made-up metadata only): the visible GPU decides, as before
    assert devices.choose("auto", env(None, gpu=True), "generation").device == "cuda"
    assert "no NVIDIA GPU is visible" in devices.unavailable("cuda", env(None), "generation")


def test_nothing_to_load_without_a_cuda_build():
    """This venv has the CPU runtimes: no CUDA library, so no preload, no child process, no check."""
    assert cuda.runtime_library("generation") is None and cuda.runtime_library("embeddings") is None
    assert not cuda.installed()
    assert cuda.preload() == {} and cuda.check() is None
    assert cuda.library_problem("generation") is None
    devices.load_libraries("cuda", "generation")  # nothing to load: the device check says what is missing
    devices.load_libraries("cpu", "embeddings")
    assert devices.detect().cuda is None


def test_on_a_mac_there_is_no_cuda_library_to_look_for():
    assert cuda.runtime_library("generation", platform="darwin") is None
    assert [library.name("win32") for library in cuda.LIBRARIES][:3] == [
        "cudart64_13.dll",
        "cublasLt64_13.dll",
        "cublas64_13.dll",
    ]


def test_the_session_the_check_asks_for_cuda_is_a_real_graph():
    """The check's tiny graph (y = x + x) runs, here on the CPU, and gives what the check compares with."""
    session = ort.InferenceSession(cuda.TINY_MODEL, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([1.5], dtype=np.float32)})
    assert float(y[0]) == 3.0


def test_a_check_that_does_not_answer_is_a_failed_check():
    """A child that hangs or dies before it answers (a broken driver can take its process down) is a failed check,
    in words, not a hang or an exception in the server."""
    checked = cuda._checked.__wrapped__(0.001)  # too short for a spawned Python to answer
    assert checked.failed and checked.failed.startswith("the CUDA check failed: ")
