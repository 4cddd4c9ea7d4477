"""NVIDIA's side: a GPU judged without CUDA (`nvidia_gpu_visible`), CUDA's libraries loaded before onnxruntime(-genai)
asks for them (`preload`), and a check of what really loads (`check`).

`pip install 'ortserve[cuda]'` brings NVIDIA's CUDA 13 runtime as wheels (onnxruntime-gpu's extras `cuda` and
`cudnn`, and nvidia-cublas), which put the libraries in site-packages/nvidia/*/lib (Windows: bin), where the
system's loader does not look: onnxruntime-genai's CUDA library then fails on libcublasLt.so.13. `preload()`
does what `onnxruntime.preload_dlls()` does, from the same folders and without printing: it loads each library
by its full path (on Windows after adding its folder to the DLL search path), so that when a runtime asks for
one by name the loader has it already. A no-op where there is nothing to load (macOS, the CPU builds).

The runtimes' own answers say yes too easily: `og.is_cuda_available()` says how the wheel was built, and
`onnxruntime.get_available_providers()` lists CUDA on a machine without a GPU. `check()` finds out what really
loads, in a spawned child process (a broken driver cannot take the caller down, and nothing of CUDA stays in
its memory), once per process: the NVIDIA driver (it loads, starts, counts the GPUs and supports CUDA 13), each
library after the preload, each runtime's CUDA library, and a tiny onnxruntime session asked for CUDA. Its facts,
a `CudaCheck`, go into `devices.Environment`, and `devices.unavailable` says what they mean.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

CUDA_MAJOR = 13  # the CUDA of onnxruntime-gpu 1.31 and onnxruntime-genai-cuda 0.18 (PyPI's builds)
DRIVER = {"linux": "libcuda.so.1", "win32": "nvcuda.dll"}  # the NVIDIA driver's CUDA library
INSTALL = "pip install 'ortserve[cuda]'"
CHECK_TIMEOUT_S = 120.0  # a cold disk and a big GPU machine's cuInit take seconds, not minutes


@dataclass(frozen=True)
class Library:
    linux: str
    windows: str
    package: str  # the wheel that ships it
    runtimes: tuple[str, ...]  # who needs it: "generation" (onnxruntime-genai), "embeddings" (onnxruntime)
    # (onnxruntime-genai runs its models through onnxruntime's CUDA provider: what that needs, generation needs)

    def name(self, platform: str) -> str:
        return self.windows if platform == "win32" else self.linux


BOTH = ("generation", "embeddings")
LIBRARIES = (  # in load order: a library after those it links (cublas needs cublasLt, curand cudart)
    Library("libcudart.so.13", "cudart64_13.dll", "nvidia-cuda-runtime", BOTH),
    Library("libcublasLt.so.13", "cublasLt64_13.dll", "nvidia-cublas", BOTH),
    Library("libcublas.so.13", "cublas64_13.dll", "nvidia-cublas", BOTH),
    Library("libcurand.so.10", "curand64_10.dll", "nvidia-curand", BOTH),
    Library("libcufft.so.12", "cufft64_12.dll", "nvidia-cufft", ("generation",)),  # onnxruntime-genai's (Linux)
    Library("libcudnn.so.9", "cudnn64_9.dll", "nvidia-cudnn-cu13", BOTH),  # onnxruntime's CUDA provider loads it
)
# each runtime's own CUDA library, in its package's folder
RUNTIME_LIBRARIES = {
    "generation": (
        "onnxruntime_genai",
        {"linux": "libonnxruntime-genai-cuda.so", "win32": "onnxruntime-genai-cuda.dll"},
    ),
    "embeddings": (
        "onnxruntime",
        {"linux": "capi/libonnxruntime_providers_cuda.so", "win32": "capi/onnxruntime_providers_cuda.dll"},
    ),
}
# y = x + x: the smallest graph onnxruntime runs (opset 13, IR 8), for the session the check asks for CUDA
TINY_MODEL = (
    b'\x08\x08\x12\x00:9\n\x0e\n\x01x\n\x01x\x12\x01y"\x03Add\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04'
    b"\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)


@dataclass(frozen=True)
class CudaCheck:
    """What loading CUDA in a child process showed. Each text names what failed and how to get it."""

    driver: str | None = None  # why the NVIDIA driver cannot run CUDA here; None: it starts and has a GPU
    gpus: int = 0  # GPUs the driver counts (CUDA_VISIBLE_DEVICES applies)
    driver_cuda: str | None = None  # the newest CUDA the driver supports ("13.0")
    libraries: dict[str, str] = field(default_factory=dict)  # runtime -> why its CUDA libraries do not load
    session: str | None = None  # why a session asked for CUDA did not run on it (None: it did, or was not tried)
    failed: str | None = None  # the check itself did not finish (its process died or hung)


# ---- where the libraries are ----------------------------------------------------------------------------
def _package_folder(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def runtime_library(runtime: str, platform: str = sys.platform) -> Path | None:
    """The installed runtime's own CUDA library (None: that runtime's build has no CUDA)."""
    module, files = RUNTIME_LIBRARIES[runtime]
    folder = _package_folder(module)
    if folder is None or platform not in files:
        return None
    path = folder / files[platform]
    return path if path.is_file() else None


def installed() -> bool:
    """A CUDA build of either runtime is installed on a platform CUDA runs on (a bundle needs no metadata)."""
    return sys.platform in DRIVER and any(runtime_library(r) is not None for r in RUNTIME_LIBRARIES)


def library_folders() -> list[Path]:
    """The folders NVIDIA's wheels put libraries in (nvidia/cu13/lib, nvidia/cudnn/lib; Windows: nvidia/*/bin and
    its architecture folder), then a CUDA toolkit's (CUDA_PATH, Windows only: Linux's loader has its own paths)."""
    roots = []
    try:
        spec = importlib.util.find_spec("nvidia")
        roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    except (ImportError, ValueError):
        pass
    found = [f for root in roots for pattern in ("*/lib", "*/bin", "*/bin/*") for f in sorted(root.glob(pattern))]
    toolkit = os.environ.get("CUDA_PATH") if sys.platform == "win32" else None  # set by NVIDIA's installer
    if toolkit:
        found += [Path(toolkit) / "bin", Path(toolkit) / "bin" / "x64"]
    return [f for f in found if f.is_dir()]


# ---- a GPU, judged without CUDA ------------------------------------------------------------------------------
# where nvidia-smi lives when it is not on PATH: WSL2 (which has no /proc/driver/nvidia), older Windows drivers
_SMI_OFF_PATH = ("/usr/lib/wsl/lib/nvidia-smi", r"C:\Program Files\NVIDIA Corporation\NVSMI\nvidia-smi.exe")


@functools.cache
def nvidia_gpu_visible() -> bool:
    """An NVIDIA GPU this process may use, judged without CUDA: the driver's device list, then nvidia-smi."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus") if sys.platform.startswith("linux") else None
    return gpu_listed(gpus, _smi())


def _smi() -> str | None:
    return shutil.which("nvidia-smi") or next((p for p in _SMI_OFF_PATH if os.path.isfile(p)), None)


def gpu_memory() -> tuple[int, int] | None:
    """The (total, free) bytes of the first NVIDIA GPU as `nvidia-smi` reports them; None when there is none to
    ask (server/gpu_memory.py sizes the default GPU memory budget from them)."""
    smi = _smi()
    if smi is None:
        return None
    query = [smi, "--query-gpu=memory.total,memory.free", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
        total, free = (int(float(field) * 1024 * 1024) for field in out.splitlines()[0].split(","))  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return total, free


def gpu_listed(gpus: Path | None, smi: str | None) -> bool:
    """The driver's device folder lists a GPU, else `nvidia-smi -L` names one. An empty device folder (a
    container that has the driver's files but no device) does not end the search: nvidia-smi is asked."""
    if gpus is not None and gpus.is_dir() and any(gpus.iterdir()):
        return True
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


# ---- loading ------------------------------------------------------------------------------------------------
def _load(name: str, folders: list[Path]) -> str | None:
    """Load `name` from the first folder that has it, else by name (the loader's own paths); why not, or None."""
    path = next((str(f / name) for f in folders if (f / name).is_file()), name)
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        return str(exc) or f"{name} cannot be loaded"
    return None


_preload_lock = threading.Lock()
_dll_directories: list = []  # Windows: the handles that keep the folders on the DLL search path


@functools.cache
def _preloaded() -> dict[str, str]:
    failed: dict[str, str] = {}
    folders = library_folders()
    if sys.platform == "win32":
        for folder in folders:  # for what the runtimes load by name later
            _dll_directories.append(os.add_dll_directory(str(folder)))  # type: ignore[attr-defined]
    for library in LIBRARIES:
        why = _load(library.name(sys.platform), folders)
        if why:
            failed[library.name(sys.platform)] = why
    if sys.platform == "win32":  # cuDNN loads its parts by name when it runs; Linux finds them beside it
        for folder in folders:
            for part in sorted(folder.glob("cudnn_*64_9.dll")):
                _load(part.name, [folder])
    return failed


def preload() -> dict[str, str]:
    """Load CUDA's libraries from NVIDIA's wheels (or the system) into this process, once: {library: why it did
    not load}. Call it before onnxruntime-genai or onnxruntime starts CUDA. {} where there is nothing to load."""
    if not installed():
        return {}
    with _preload_lock:
        return _preloaded()


def library_problem(runtime: str) -> str | None:
    """After `preload()`: why `runtime`'s CUDA libraries do not load here (the first missing one, its package and
    the command), or None. For generation also onnxruntime-genai's CUDA library itself, as og loads it."""
    failed = preload()
    for library in LIBRARIES:
        name = library.name(sys.platform)
        if runtime in library.runtimes and name in failed:
            return f"{name} (from {library.package}) does not load: {failed[name]}; {INSTALL} installs it"
    own = runtime_library(runtime)
    if runtime == "generation" and own is not None:
        why = _load(str(own), [])
        if why:
            return f"onnxruntime-genai's CUDA library does not load: {why}"
    return None


# ---- the check, in a child process ------------------------------------------------------------------------
def _driver() -> tuple[str | None, int, str | None]:
    """(why the driver cannot run CUDA, GPUs, the CUDA version it supports), asked through the driver's API."""
    name = DRIVER[sys.platform]
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        return (
            f"there is no NVIDIA driver ({exc or name + ' cannot be loaded'}): install NVIDIA's driver, "
            "or give the container the GPU (docker run --gpus all)",
            0,
            None,
        )

    def error_name(code: int) -> str:
        text = ctypes.c_char_p()
        if lib.cuGetErrorName(code, ctypes.byref(text)) == 0 and text.value:
            return text.value.decode()
        return f"error {code}"

    version = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(version))
    supports = f"{version.value // 1000}.{version.value % 1000 // 10}" if version.value else None
    if version.value and version.value // 1000 < CUDA_MAJOR:
        return (
            f"the NVIDIA driver supports CUDA {supports}, and the CUDA {CUDA_MAJOR} libraries need a newer one "
            "(R580 or later): update the driver",
            0,
            supports,
        )
    code = lib.cuInit(0)
    if code != 0:
        named = error_name(code)
        if named == "CUDA_ERROR_NO_DEVICE":
            return (
                "the NVIDIA driver finds no GPU (CUDA_ERROR_NO_DEVICE; CUDA_VISIBLE_DEVICES may hide it)",
                0,
                supports,
            )
        return f"the NVIDIA driver does not start ({named})", 0, supports
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    if count.value < 1:
        return "the NVIDIA driver finds no GPU (CUDA_VISIBLE_DEVICES may hide it)", 0, supports
    return None, count.value, supports


def _session() -> str | None:
    """Why a tiny onnxruntime session asked for CUDA did not run on it; None when it did."""
    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # its own log of the failure goes to our caller's stderr otherwise
    try:
        session = ort.InferenceSession(TINY_MODEL, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if "CUDAExecutionProvider" not in session.get_providers():
            return (
                f"onnxruntime's CUDA provider did not start (the session runs on {', '.join(session.get_providers())})"
            )
        (y,) = session.run(None, {"x": np.array([1.5], dtype=np.float32)})
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"an onnxruntime session on CUDA failed: {type(exc).__name__}: {exc}"
    return None if float(y[0]) == 3.0 else f"an onnxruntime session on CUDA computed 1.5 + 1.5 = {float(y[0])}"


def check_here() -> CudaCheck:
    """The check, in this process (`check()` runs it in a child): it loads CUDA's libraries here."""
    preload()
    driver, gpus, supports = _driver()
    libraries = {
        runtime: why
        for runtime in RUNTIME_LIBRARIES
        if runtime_library(runtime) is not None and (why := library_problem(runtime))
    }
    session = _session() if runtime_library("embeddings") is not None else None
    return CudaCheck(driver, gpus, supports, libraries, session)


def _child(connection) -> None:
    try:
        connection.send(check_here())
    finally:
        connection.close()


_check_lock = threading.Lock()


@functools.cache
def _checked(timeout: float) -> CudaCheck:
    context = multiprocessing.get_context("spawn")  # no fork: Windows has none, and CUDA must start fresh
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send,), name="ortserve-cuda-check", daemon=True)
    process.start()
    send.close()
    try:
        if receive.poll(timeout):
            return receive.recv()
        failed = f"it did not answer in {timeout:.0f} s"
    except EOFError:
        process.join(5)
        failed = f"its process ended with exit code {process.exitcode}"
    finally:
        receive.close()
        if process.is_alive():
            process.kill()
        process.join(5)
    return CudaCheck(failed=f"the CUDA check failed: {failed}")


def check(timeout: float = CHECK_TIMEOUT_S) -> CudaCheck | None:
    """What really loads, from a spawned child process, once per process; None where no CUDA build is installed."""
    if not installed():
        return None
    with _check_lock:
        return _checked(timeout)
