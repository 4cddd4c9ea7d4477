"""The engine's side of `ortserve.core.devices`: the same registry and probes, with a device that cannot run
here raised as NotSupportedError (the server's 501, naming what is missing), as every server error is typed.

A runner process that fails to load reports its error by class name, and the registry passes an APIError
through unchanged, so the conversion happens here, where the engine calls in, not later.
"""

from __future__ import annotations

from typing import Any

from ortserve.core import devices as core
from ortserve.core.devices import (  # noqa: F401  (what the engine uses, from one place)
    DEVICES,
    PROVIDERS,
    Environment,
    Runtime,
    detect,
    device_of_providers,
    genai_devices,
    ort_providers,
    physical_cores,
    unavailable,
)
from ortserve.server.errors import NotSupportedError


def resolve_device(
    device: str, runtime: Runtime = "generation", env: Environment | None = None, built_for: str | None = None
) -> str:
    """`core.resolve_device`: "auto" becomes the best available device; NotSupportedError when none can."""
    try:
        return core.resolve_device(device, runtime, env, built_for)
    except core.DeviceUnavailableError as exc:
        raise NotSupportedError(str(exc)) from exc


def configure(config: Any, device: str, threads: int, og: Any = None) -> None:
    """`core.configure`: an `og.Config` pointed at `device`; NotSupportedError when the build lacks it."""
    try:
        core.configure(config, device, threads, og)
    except core.DeviceUnavailableError as exc:
        raise NotSupportedError(str(exc)) from exc


def load_libraries(device: str, runtime: Runtime) -> None:
    """`core.load_libraries`: what `device` needs loaded in this process (CUDA's libraries); NotSupportedError naming
    the library and its package when one does not load."""
    try:
        core.load_libraries(device, runtime)
    except core.DeviceUnavailableError as exc:
        raise NotSupportedError(str(exc)) from exc
