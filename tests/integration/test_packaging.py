"""The wheel installs ortserve under its own import name, with every module and data file of the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"core": "ortserve.core", "server": "ortserve.server", "conversion": "ortserve.conversion"}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {
        ".".join([FOLDERS[init.relative_to(ROOT).parts[0]], *init.relative_to(ROOT).parts[1:-1]])
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert found == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    source, out = tmp_path_factory.mktemp("source") / "ortserve", tmp_path_factory.mktemp("wheel")
    # a copy, so that the build leaves no build/ or egg-info in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "models", "*.egg-info"))
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*command, "--wheel-dir", str(out), str(source)], check=True, timeout=300)
    (built,) = out.glob("ortserve-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_holds_every_source_file_under_ortserve(wheel):
    names = set(wheel.namelist())
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".jinja", ".html") and "__pycache__" not in path.parts:
                inside = Path(*package.split("."), path.relative_to(ROOT / folder)).as_posix()
                assert inside in names, f"{path.relative_to(ROOT)} is missing from the wheel"
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"ortserve"}  # no top-level `server` or `conversion` to collide with other projects


def test_console_script_points_at_the_installed_cli(wheel):
    entry_points = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "ortserve = ortserve.server.cli:main" in wheel.read(entry_points).decode()
