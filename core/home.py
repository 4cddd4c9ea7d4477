"""Where a store lives: the home folder, its `models/` (the store: weights and per-model settings) and its
`configs/` (server.toml), and the one-time move of per-model settings out of the old `configs/models/`.

These are the defaults behind `ServerSettings.models_dir` / `configs_dir` and the store commands'
`--models-dir`; `$ORTSERVE_HOME`, `$ORTSERVE_MODELS` and `$ORTSERVE_CONFIGS` move them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ortserve.core.store import SETTINGS_SUFFIX

log = logging.getLogger(__name__)


def _is_checkout(root: Path) -> bool:
    project = root / "pyproject.toml"
    return project.is_file() and 'name = "ortserve"' in project.read_text(encoding="utf-8")


def default_home() -> Path:
    """Where models/ and configs/ live: $ORTSERVE_HOME, else the checkout, else the per-user data folder."""
    env = os.environ.get("ORTSERVE_HOME")
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[1]
    if _is_checkout(root):
        return root
    import platformdirs  # Windows: %LOCALAPPDATA%\ortserve, macOS: ~/Library/Application Support/ortserve

    return Path(platformdirs.user_data_dir("ortserve", appauthor=False))


def default_models_dir() -> Path:
    """The store: $ORTSERVE_MODELS, else <home>/models."""
    env = os.environ.get("ORTSERVE_MODELS")
    return Path(env).expanduser() if env else default_home() / "models"


def default_configs_dir() -> Path:
    """Where server.toml is: $ORTSERVE_CONFIGS, else <home>/configs."""
    env = os.environ.get("ORTSERVE_CONFIGS")
    return Path(env).expanduser() if env else default_home() / "configs"


def migrate_settings(models_dir: Path, configs_dir: Path) -> list[Path]:
    """Move the per-model settings that ortserve used to keep in `<configs>/models/NAME.toml` into the store
    (`<models>/NAME.toml`), where they now live; returns the files moved.

    Only when both folders are one home's (`<home>/configs` and `<home>/models`): a store named elsewhere (with
    --models-dir or $ORTSERVE_MODELS) never takes another store's settings. A file whose target exists stays
    where it is (and is no longer read). Each move is one INFO line."""
    old = Path(configs_dir) / "models"
    if Path(os.path.abspath(configs_dir)).parent != Path(os.path.abspath(models_dir)).parent or not old.is_dir():
        return []
    moved = []
    for path in sorted(p for p in old.glob(f"*{SETTINGS_SUFFIX}") if p.is_file()):
        target = Path(models_dir) / path.name
        if target.exists():
            continue
        Path(models_dir).mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        log.info("moved the settings file %s into the model store: %s", path, target)
        moved.append(target)
    return moved
