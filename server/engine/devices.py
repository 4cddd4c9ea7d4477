"""Where a model runs: execution providers and CPU threads (imported by the runner process).

Providers are a registry: each entry turns an `og.Config` (already cleared of the
providers the builder wrote) into one for its device. CUDA / DirectML / CoreML
add an entry here and nothing else changes.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from server.errors import NotSupportedError

PROVIDERS: dict[str, Callable[[Any], None]] = {}


def provider(name: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    def register(configure: Callable[[Any], None]) -> Callable[[Any], None]:
        PROVIDERS[name] = configure
        return configure

    return register


@provider("cpu")
def _cpu(config: Any) -> None:
    """onnxruntime's CPU provider is what a config without providers uses."""


def resolve_device(device: str) -> str:
    """Map "auto" to the best registered device; reject devices without a provider entry."""
    if device == "auto":
        return "cpu"
    if device not in PROVIDERS:
        raise NotSupportedError(f"device '{device}' is not supported yet; available: {', '.join(sorted(PROVIDERS))}")
    return device


def configure(config: Any, device: str, threads: int) -> None:
    """Point an `og.Config` at `device`, with `threads` intra-op threads."""
    config.clear_providers()
    PROVIDERS[resolve_device(device)](config)
    options = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
    config.overlay(json.dumps(options))


def physical_cores() -> int:
    """Physical cores this process may use; $ORTSERVE_THREADS overrides.

    onnxruntime's default (one thread per logical core) decodes ~30% slower on SMT machines.
    """
    env = os.environ.get("ORTSERVE_THREADS")
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env)
    return _detected_cores()


@functools.cache  # asked at every model load, from the event loop; macOS needs a subprocess
def _detected_cores() -> int:
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
