"""`ortserve info`: what this machine can run, and where a running server's models run.

It reports the installed packages, which variant of each runtime the import really is (onnxruntime and
onnxruntime-genai each come in several packages that install the same module), the providers each
runtime offers, what loading CUDA really shows where a CUDA build is installed (`core.cuda.check`), every
device's availability for generation and embeddings (with the reason when not),
the device `auto` resolves to and why, and, from a running server's /health, each loaded model's device.
`collect()` builds the report as data (`--json` prints it); `render()` writes it for people.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import urllib.error
from collections.abc import Callable
from typing import Any

from ortserve.core import devices
from ortserve.server import __version__
from ortserve.server.remote import opener

# what `auto` picks, per kind of model: (label, runtime, the device a chat model was converted for)
AUTO_CASES = (
    ("embeddings", "embeddings", None),
    ("chat built for cpu", "generation", "cpu"),
    ("chat built for cuda", "generation", "cuda"),
    ("chat built for dml", "generation", "dml"),
    ("chat, build unknown", "generation", None),  # a model whose manifest names no device (registered as it was)
)
# distributions that install the same module: (module, the distributions)
_SHARED_MODULES = (
    (
        "onnxruntime_genai",
        ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml", "onnxruntime-genai-winml"),
    ),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-windowsml")),
)


def conflicts(packages: dict[str, str]) -> list[str]:
    """Plain warnings for runtime packages that overwrite each other's files."""
    out = []
    for module, names in _SHARED_MODULES:
        present = [n for n in names if n in packages]
        if len(present) > 1:
            keep = next((n for n in present if n != names[0]), present[-1])
            out.append(
                f"{' and '.join(present)} are all installed and share the module '{module}': the files of the one "
                f"installed last win. Keep one: pip uninstall -y {' '.join(n for n in present if n != keep)} && "
                f"pip install --force-reinstall --no-deps {keep}"
            )
    return out


_INSTALL = (
    "pip install 'ortserve[cpu]' (or 'ortserve[cuda]' for an NVIDIA GPU, 'ortserve[winml]' for DirectML on "
    "Windows: one of them)"
)


def _importable(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


def missing_runtimes(
    packages: dict[str, str], has_module: Callable[[str], bool] | None = None
) -> tuple[str | None, str | None]:
    """(an error: nothing can run, a warning: chat models cannot run) for the runtimes missing from `packages`.
    `has_module` (default: importlib's find_spec) speaks for a runtime without package metadata (a frozen
    bundle, a build from source)."""
    probe = has_module or _importable

    def present(module: str, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if n in packages] or ([names[0]] if probe(module) else [])

    genai, ort = (present(module, names) for module, names in _SHARED_MODULES)
    if not genai and not ort:
        return f"no ONNX Runtime is installed, so no model can run; install one: {_INSTALL}", None
    if not genai:
        return None, f"onnxruntime-genai is not installed, so chat models cannot run (embeddings can): {_INSTALL}"
    if not ort:
        return f"{genai[0]} is installed without onnxruntime, so no model can run: {_INSTALL}", None
    return None, None


def runtimes_installed() -> bool:
    """`serve`'s check before it starts: exactly one runtime. Refuses without any (False), warns about a half or
    a double install (the runtimes' builds overwrite each other's modules) and says what to run."""
    packages = devices.installed_packages()
    error, warning = missing_runtimes(packages)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return False
    for problem in [warning, *conflicts(packages)]:
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
    return True


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
        from onnxruntime.capi import build_and_package_info
    except Exception as exc:  # noqa: BLE001 - a broken install is what this command is for
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "package": getattr(build_and_package_info, "package_name", "onnxruntime"),
        "version": ort.__version__,
        "providers": list(ort.get_available_providers()),
    }


def _onnxruntime_genai() -> dict[str, Any]:
    try:
        import onnxruntime_genai as og
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "package": getattr(og, "__id__", "onnxruntime-genai"),
        "version": og.__version__,
        "devices": sorted(devices.genai_devices(og)),
    }


def server_devices(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """A running server's /health: its status and each loaded model's device; or why it did not answer."""
    target = url.rstrip("/") + "/health"
    try:
        with opener(target).open(target, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:  # 503 while loading still has a body
        raw = exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a malformed URL
        return {"url": url, "error": f"no server answers ({getattr(exc, 'reason', exc)})"}
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("devices", {}), dict):  # another kind of server
        return {"url": url, "error": f"{target} did not answer as ortserve does (is it another server?)"}
    return {"url": url, "status": body.get("status"), "devices": body.get("devices", {})}


def collect(url: str | None) -> dict[str, Any]:
    ort_info, genai_info = _onnxruntime(), _onnxruntime_genai()
    base = devices.detect()  # with a CUDA build: what loading CUDA showed (a child process)
    env = dataclasses.replace(  # what the runtimes say wins; the package metadata speaks for one that fails to import
        base,
        ort_providers=tuple(ort_info["providers"]) if "providers" in ort_info else None,
        genai_devices=frozenset(genai_info["devices"]) if "devices" in genai_info else None,
    )
    table = {
        name: {runtime: devices.unavailable(name, env, runtime) for runtime in ("generation", "embeddings")}
        for name in devices.PROVIDERS
    }
    auto = {}
    for label, runtime, built_for in AUTO_CASES:
        try:
            choice = devices.choose("auto", env, runtime, built_for)  # type: ignore[arg-type]
        except devices.DeviceUnavailableError as exc:
            auto[label] = {"device": None, "reason": str(exc), "missed": None}
            continue
        missed = devices.missed_accelerator(env, runtime) if built_for is None else None  # type: ignore[arg-type]
        auto[label] = {"device": choice.device, "reason": choice.reason, "missed": missed}
    report: dict[str, Any] = {
        "ortserve": __version__,
        "platform": {"system": platform.system(), "machine": env.machine, "python": platform.python_version()},
        "packages": dict(base.packages),
        "conflicts": conflicts(dict(base.packages)),
        "missing": [m for m in missing_runtimes(dict(base.packages)) if m],
        "onnxruntime": ort_info,
        "onnxruntime_genai": genai_info,
        "nvidia_gpu_visible": env.gpu,
        "cuda": None if env.cuda is None else dataclasses.asdict(env.cuda),
        "devices": table,
        "auto": auto,
    }
    if url:
        report["server"] = server_devices(url)
    return report


def _cuda_lines(check: dict[str, Any] | None) -> list[str]:
    """What loading CUDA showed (only where a CUDA build is installed)."""
    if check is None:
        return []
    if check["failed"]:
        return [f"  CUDA check:                     {check['failed']}"]
    libraries = check["libraries"]
    lines = ["  CUDA runtime libraries:         " + ("load" if not libraries else "do not all load")]
    lines += [f"    {runtime}: {why}" for runtime, why in libraries.items()]
    if check["driver"]:
        driver = f"not usable: {check['driver']}"
    else:
        driver = f"yes, CUDA {check['driver_cuda']}, {check['gpus']} GPU{'s' if check['gpus'] != 1 else ''}"
    lines.append(f"  NVIDIA driver:                  {driver}")
    if check["session"]:
        lines.append(f"  onnxruntime session on CUDA:    {check['session']}")
    return lines


def render(report: dict[str, Any]) -> str:
    p = report["platform"]
    lines = [f"ortserve {report['ortserve']} on {p['system']} {p['machine']}, Python {p['python']}", "", "packages"]
    lines += [f"  {name:<28} {version}" for name, version in report["packages"].items()]
    lines += [f"  warning: {c}" for c in report["conflicts"] + report["missing"]]
    ort, genai = report["onnxruntime"], report["onnxruntime_genai"]
    lines += ["", "runtimes"]
    lines.append(
        "  onnxruntime (embeddings):       "
        + (
            f"{ort['package']} {ort['version']}: {', '.join(ort['providers'])}"
            if "error" not in ort
            else f"cannot be imported: {ort['error']}"
        )
    )
    lines.append(
        "  onnxruntime-genai (generation): "
        + (
            f"{genai['package']} {genai['version']}: {', '.join(genai['devices'])}"
            if "error" not in genai
            else f"cannot be imported: {genai['error']}"
        )
    )
    lines.append(f"  NVIDIA GPU visible:             {'yes' if report['nvidia_gpu_visible'] else 'no'}")
    lines += _cuda_lines(report.get("cuda"))
    lines += ["", "devices"]
    for name, runtimes in report["devices"].items():
        for runtime, why in runtimes.items():
            lines.append(f"  {name:<7} {runtime:<11} {'yes' if why is None else 'no: ' + why}")
    lines += ["", "--device auto (the default)"]
    for label, choice in report["auto"].items():
        lines.append(f"  {label:<20} -> {choice['device'] or 'cannot run'}: {choice['reason']}")
        if choice["missed"]:
            lines.append(f"  {'':<20}    warning: an accelerator is half set up: {choice['missed']}")
    server = report.get("server")
    if server:
        lines += ["", f"server {server['url']}"]
        if "error" in server:
            lines.append(f"  {server['error']}")
        else:
            lines.append(f"  status: {server['status']}")
            loaded = server["devices"]
            lines += [f"  {name:<28} {device}" for name, device in loaded.items()] or ["  no model loaded yet"]
    return "\n".join(lines)


def main(url: str | None, as_json: bool = False) -> int:
    report = collect(url)
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 0


if __name__ == "__main__":
    from ortserve.server.remote import served

    sys.exit(main(served()[0]))
