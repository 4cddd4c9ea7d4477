"""Where a model runs: execution providers and CPU threads.

Providers are a registry (`PROVIDERS`, in `auto`'s order of preference): each entry says
which onnxruntime-genai and onnxruntime builds offer it, on which platforms, how to get
it, and how to point an `og.Config` at it (`clear_providers`, `append_provider`,
`set_provider_option`; the files the builder wrote are never edited). A new provider is
one `register(...)` call.

`DEVICES` is the one list of device names: what `--device`, `server.toml` and the per-model
settings accept ("auto" and the registered providers); `BUILD_DEVICES` (no "auto") is what
a model can be converted for.

The choice is a pure function of an `Environment` (platform, installed distributions,
a visible NVIDIA GPU, the providers each runtime reports, and where a CUDA build is installed,
what CUDA really loads), so it is tested with made-up environments; `detect()` gathers the real
one. The server process decides from package metadata and `cuda.check()` (a child process that
loads CUDA, once per process) without importing onnxruntime-genai; the runner process loads
CUDA's libraries (`load_libraries`) and checks what its onnxruntime-genai build offers before
loading the model. A device that cannot run here is a `DeviceUnavailableError` (the server
answers it as a 501).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from ortserve.core import cuda
from ortserve.core.cuda import CudaCheck

log = logging.getLogger(__name__)

Runtime = Literal["generation", "embeddings"]
BUILD_DEVICES = ("cpu", "cuda", "dml", "coreml")  # what a model is converted for: the registered providers
DEVICES = ("auto", *BUILD_DEVICES)  # what `--device`, server.toml and the per-model settings accept


class DeviceUnavailableError(Exception):
    """A device that cannot run a model here; the message says why and what to install."""


@dataclass(frozen=True)
class Provider:
    name: str  # our device name
    label: str
    platforms: tuple[str, ...] = ()  # sys.platform values it exists on; () = everywhere
    machines: tuple[str, ...] = ()  # platform.machine() values; () = any
    needs_gpu: bool = False  # an NVIDIA GPU must be visible
    genai_ep: str | None = None  # og's provider name; None: generation does not run on it
    genai_packages: tuple[str, ...] = ()  # distributions whose onnxruntime-genai build has it
    genai_options: Mapping[str, str] = field(default_factory=dict)
    genai_missing: str = ""  # why generation cannot use it (genai_ep None), or how to get the build
    ort_ep: str | None = None  # onnxruntime's provider name
    ort_packages: tuple[str, ...] = ()  # distributions whose onnxruntime build has it
    ort_missing: str = ""  # how to get the onnxruntime build
    cpu_fallback: bool = True  # a chat model built for it still runs on the CPU (False: paged attention)


PROVIDERS: dict[str, Provider] = {}


def register(entry: Provider) -> Provider:
    if entry.name not in BUILD_DEVICES:  # the one list of names: a new provider is added there too
        raise ValueError(f"device '{entry.name}' is not in BUILD_DEVICES {BUILD_DEVICES}")
    PROVIDERS[entry.name] = entry
    return entry


register(
    Provider(
        "cuda",
        "NVIDIA CUDA",
        platforms=("linux", "win32"),
        needs_gpu=True,
        genai_ep="cuda",
        genai_packages=("onnxruntime-genai-cuda", "onnxruntime-genai-winml"),
        genai_options={"enable_cuda_graph": "0"},  # the builder's default; paged attention schedules variable batches
        genai_missing="install onnxruntime-genai-cuda in place of onnxruntime-genai (pip uninstall -y "
        "onnxruntime-genai onnxruntime, then pip install 'ortserve[cuda]'; README 'Devices and platforms')",
        ort_ep="CUDAExecutionProvider",
        ort_packages=("onnxruntime-gpu",),
        ort_missing="install onnxruntime-gpu in place of onnxruntime (pip uninstall -y onnxruntime-genai onnxruntime, "
        "then pip install 'ortserve[cuda]')",
        cpu_fallback=False,  # CUDA chat builds use paged attention: og.Engine on CUDA only
    )
)
register(
    Provider(
        "dml",
        "DirectML",
        platforms=("win32",),
        genai_ep="dml",
        genai_packages=("onnxruntime-genai-directml", "onnxruntime-genai-winml"),
        genai_missing="needs an onnxruntime-genai 0.18 build with DirectML: the stock onnxruntime-genai wheel has "
        "none; onnxruntime-genai-winml with onnxruntime-windowsml has it, untested (see the README)",
        ort_ep="DmlExecutionProvider",
        ort_packages=("onnxruntime-directml", "onnxruntime-windowsml"),
        ort_missing="install onnxruntime-directml (or onnxruntime-windowsml) in place of onnxruntime",
    )
)
register(
    Provider(
        "coreml",
        "Apple CoreML",
        platforms=("darwin",),
        machines=("arm64",),
        genai_missing="onnxruntime-genai models (GroupQueryAttention, MatMulNBits) do not run on CoreML; "
        "chat models run on the CPU on a Mac (--device cpu, or auto)",
        ort_ep="CoreMLExecutionProvider",
        ort_packages=("onnxruntime",),
        ort_missing="the stock onnxruntime wheel for macOS on Apple silicon has it",
    )
)
register(Provider("cpu", "CPU", genai_ep="cpu", ort_ep="CPUExecutionProvider"))

# The distributions `ortserve info` reports and `detect()` looks at.
PACKAGES = (
    "ortserve",
    "onnxruntime-genai",
    "onnxruntime-genai-cuda",
    "onnxruntime-genai-directml",
    "onnxruntime-genai-winml",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-windowsml",
    "torch",
    "transformers",
)
_PLATFORM_NAMES = {"linux": "Linux", "win32": "Windows", "darwin": "macOS"}


@dataclass(frozen=True)
class Environment:
    """What the machine offers. None for a runtime's providers: not asked (the package metadata decides)."""

    platform: str  # sys.platform
    machine: str  # platform.machine()
    packages: Mapping[str, str]  # installed distribution -> version
    gpu: bool = False  # an NVIDIA GPU is visible
    ort_providers: tuple[str, ...] | None = None  # onnxruntime.get_available_providers()
    genai_devices: frozenset[str] | None = None  # devices this onnxruntime-genai build offers (`genai_devices()`)
    cuda: CudaCheck | None = None  # what loading CUDA showed (`cuda.check()`); None: no CUDA build, or not asked


@dataclass(frozen=True)
class Choice:
    device: str
    reason: str  # why this device (for `ortserve info` and the logs)


def unavailable(device: str, env: Environment, runtime: Runtime) -> str | None:
    """Why `device` cannot run `runtime` here, in plain words; None when it can."""
    entry = PROVIDERS.get(device)
    if entry is None:
        return f"unknown device '{device}'; devices: {', '.join(DEVICES)}"
    if entry.platforms and env.platform not in entry.platforms:
        where = " or ".join(_PLATFORM_NAMES.get(p, p) for p in entry.platforms)
        return f"{entry.label} runs on {where} only (this is {_PLATFORM_NAMES.get(env.platform, env.platform)})"
    if entry.machines and env.machine not in entry.machines:
        return f"{entry.label} needs {' or '.join(entry.machines)} hardware (this machine is {env.machine})"
    if runtime == "generation":
        if entry.genai_ep is None:
            return f"generation has no {entry.label} route: {entry.genai_missing}"
        if env.genai_devices is not None:
            offered = device in env.genai_devices
        else:
            offered = not entry.genai_packages or any(p in env.packages for p in entry.genai_packages)
        if not offered:
            return f"the installed onnxruntime-genai has no {entry.label} support: {entry.genai_missing}"
    else:
        if env.ort_providers is not None:
            offered = entry.ort_ep in env.ort_providers
        else:
            offered = not entry.ort_packages or any(p in env.packages for p in entry.ort_packages)
        if not offered:
            return f"the installed onnxruntime has no {entry.ort_ep}: {entry.ort_missing}"
    if entry.needs_gpu and env.cuda is not None:
        return cuda_problem(env.cuda, runtime)
    if entry.needs_gpu and not env.gpu:
        return "no NVIDIA GPU is visible (driver not loaded, or CUDA_VISIBLE_DEVICES hides it)"
    return None


def cuda_problem(check: CudaCheck, runtime: Runtime) -> str | None:
    """Why CUDA cannot run `runtime`, from what loading it showed: the libraries that did not load, the driver, and
    else an onnxruntime session that did not run on CUDA (onnxruntime-genai runs its models through onnxruntime's
    CUDA provider too); None when it can."""
    if check.failed:
        return check.failed
    problems = [why for why in (check.libraries.get(runtime), check.driver) if why]
    if not problems and check.session:
        problems.append(check.session)
    if not problems:
        return None
    loads = "" if runtime in check.libraries else " and its libraries load"
    return f"the CUDA runtime is installed{loads}, but {'; and '.join(problems)}"


def choose(device: str, env: Environment, runtime: Runtime, built_for: str | None = None) -> Choice:
    """The device to run on: `device` itself when it can run here (else DeviceUnavailableError saying why), or
    for "auto" the first registered provider that can, down to the CPU.

    `built_for`: the device a chat model was converted for (its manifest's `device`). The builder makes a
    different graph per device (CPU builds keep fp32 activations, CUDA builds fp16 and paged attention), so
    under "auto" a chat model runs on the device it was built for when that is available, else on the CPU."""
    if device != "auto":
        why = unavailable(device, env, runtime)
        if why is not None:
            raise DeviceUnavailableError(f"device '{device}' is not available for {runtime}: {why}")
        return Choice(device, "asked for")
    target = PROVIDERS.get(built_for or "")
    if target is not None and runtime == "generation":
        why = unavailable(target.name, env, runtime)
        if why is None:
            return Choice(target.name, f"the model was built for {target.name}")
        if not target.cpu_fallback:
            raise DeviceUnavailableError(
                f"the model was built for {target.name}, which is not available here, and it "
                f"cannot run on the CPU (convert it with --device cpu for that): {why}"
            )
        return Choice("cpu", f"the model was built for {target.name}, which is not available here: {why}")
    skipped: list[str] = []
    for name in PROVIDERS:
        why = unavailable(name, env, runtime)
        if why is None:
            reason = f"the first available of {', '.join(PROVIDERS)}"
            return Choice(name, reason + (f" ({', '.join(skipped)}: not available here)" if skipped else ""))
        skipped.append(name)
    raise DeviceUnavailableError(f"no device can run {runtime} here")  # never: the CPU always can


def missed_accelerator(env: Environment, runtime: Runtime) -> str | None:
    """When `auto` lands on the CPU although an accelerator was half there (its package installed, or an NVIDIA
    GPU visible): what is missing, for a warning. None when the CPU is simply what this machine has."""
    for entry in PROVIDERS.values():
        if entry.name == "cpu" or (entry.platforms and env.platform not in entry.platforms):
            continue
        packages = entry.genai_packages if runtime == "generation" else entry.ort_packages
        hinted = any(p in env.packages for p in packages if p != "onnxruntime") or (entry.needs_gpu and env.gpu)
        why = unavailable(entry.name, env, runtime)
        if hinted and why is not None:
            return f"{entry.name}: {why}"
    return None


def resolve_device(
    device: str, runtime: Runtime = "generation", env: Environment | None = None, built_for: str | None = None
) -> str:
    """`device` checked against this machine; "auto" becomes the best available one (the CPU, with a warning
    when an accelerator was meant to be there). DeviceUnavailableError names what is missing."""
    if device == "cpu" or (device == "auto" and runtime == "generation" and built_for == "cpu"):
        # The CPU always runs, and a CPU build stays there under auto: no probing (package metadata, nvidia-smi)
        # on the caller's thread, which for a chat model is the event loop
        return "cpu"
    env = env or detect()
    chosen = choose(device, env, runtime, built_for)
    if device == "auto" and chosen.device == "cpu":
        if built_for == "cpu":  # where it was built to run
            missed = None
        else:
            missed = chosen.reason if built_for in PROVIDERS else missed_accelerator(env, runtime)
        if missed:
            log.warning("device auto: running %s on the CPU (%s)", runtime, missed)
    return chosen.device


# ---- onnxruntime-genai (runner process) and onnxruntime ------------------------------------------
def genai_devices(og: Any) -> frozenset[str]:
    """The devices an imported onnxruntime-genai build offers (its own `is_*_available`, plus the CPU)."""
    offered = {"cpu"}
    for name, probe in (("cuda", "is_cuda_available"), ("dml", "is_dml_available")):
        try:
            if getattr(og, probe)():
                offered.add(name)
        except Exception:  # noqa: BLE001 - a probe that fails means "no"
            pass
    return frozenset(offered)


def configure(config: Any, device: str, threads: int, og: Any = None) -> None:
    """Point an `og.Config` at `device` (already resolved), with `threads` intra-op threads.

    With `og`, the build is checked first: a device it lacks is a DeviceUnavailableError naming the package."""
    entry = PROVIDERS.get(device)
    if entry is None or entry.genai_ep is None:
        why = unavailable(device, detect(), "generation")
        raise DeviceUnavailableError(f"device '{device}' cannot run generation: {why}")
    if og is not None and device not in genai_devices(og):
        raise DeviceUnavailableError(
            f"the installed onnxruntime-genai has no {entry.label} support: {entry.genai_missing}"
        )
    config.clear_providers()
    if entry.name != "cpu":  # onnxruntime's CPU provider is what a config without providers uses
        config.append_provider(entry.genai_ep)
        for key, value in entry.genai_options.items():
            config.set_provider_option(entry.genai_ep, key, value)
    options = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
    config.overlay(json.dumps(options))


def ort_providers(device: str) -> list[str]:
    """onnxruntime's providers for a resolved device: its own, then the CPU for what it cannot run."""
    entry = PROVIDERS[device]
    assert entry.ort_ep is not None  # every registered device names its onnxruntime provider
    return [entry.ort_ep] + (["CPUExecutionProvider"] if entry.name != "cpu" else [])


def device_of_providers(providers: list[str]) -> str:
    """Our device name for the providers an onnxruntime session really uses (its first one)."""
    first = providers[0] if providers else "CPUExecutionProvider"
    return next((p.name for p in PROVIDERS.values() if p.ort_ep == first), "cpu")


# ---- the real environment ---------------------------------------------------------------------------
def detect(*, ort: bool = False, genai: bool = False) -> Environment:
    """This machine's facts; `ort` / `genai` also import those runtimes and ask them (slower). Where a CUDA build is
    installed, what loading CUDA shows (`cuda.check()`: a child process, the first time in a process)."""
    ort_list = None
    if ort:
        import onnxruntime

        ort_list = tuple(onnxruntime.get_available_providers())
    genai_list = None
    if genai:
        import onnxruntime_genai

        genai_list = genai_devices(onnxruntime_genai)
    return Environment(
        sys.platform,
        platform.machine(),
        installed_packages(),
        cuda.nvidia_gpu_visible(),
        ort_list,
        genai_list,
        cuda.check(),
    )


def load_libraries(device: str, runtime: Runtime) -> None:
    """Before `runtime` starts `device` in this process: load the libraries it needs from their wheels (CUDA's,
    which the loader would not find); DeviceUnavailableError naming the library and its package when one does
    not load. Nothing to do for the other devices (and where no CUDA build is installed)."""
    entry = PROVIDERS.get(device)
    if entry is None or not entry.needs_gpu:
        return
    why = cuda.library_problem(runtime)
    if why:
        raise DeviceUnavailableError(
            f"device '{device}' is not available for {runtime}: the CUDA runtime is installed, but {why}"
        )


@functools.cache  # package metadata does not change while the server runs
def installed_packages() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


# ---- CPU threads ----------------------------------------------------------------------------------
@functools.cache  # asked at every model load, from the event loop; macOS needs a subprocess
def physical_cores() -> int:
    """Physical cores this process may use: the default thread count (the server setting `threads` sets
    another). onnxruntime's default (one thread per logical core) decodes ~30% slower on SMT machines."""
    logical = os.cpu_count() or 1
    cores = _linux_cores() if sys.platform.startswith("linux") else None
    if cores is None and sys.platform == "darwin":
        cores = _sysctl_int("hw.physicalcpu")
    if hasattr(os, "sched_getaffinity"):  # containers / taskset: never more than we may run on
        logical = len(os.sched_getaffinity(0)) or logical
    return max(1, min(cores or logical, logical))


def _linux_cores() -> int | None:
    try:
        return count_cores(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def count_cores(cpuinfo: str) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo text; None when it has no core ids (some ARM)."""
    cores: set[tuple[str, str]] = set()
    package = core = None
    for line in cpuinfo.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not key:  # blank line ends one processor block
            if core is not None:
                cores.add((package or "0", core))
            package = core = None
    return len(cores) or None


def _sysctl_int(name: str) -> int | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=True)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
