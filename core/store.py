"""The model store, one folder: `<models>/<folder>/` (ONNX files + manifest.json) and, beside it,
`<models>/NAME.toml` (how a name is served).

A *name* is what clients send as `model`. Every converted model gets a name equal
to its folder; `cp` adds a name that shares another's weights (like `ollama cp`),
with its own settings file and no folder. A folder is removed only when no name
uses it any more. Every name becomes a path through `ModelStore.path_of`, which
refuses whatever could point outside the models folder. This module is the one
owner of the store's files; it imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

import tomli_w
from pydantic import ValidationError

from ortserve.core.model_config import ModelConfig, describe

MANIFEST = "manifest.json"
REMOVED_MANIFEST = "manifest.removed.json"  # a removed model whose files were still in use (Windows)
STAGING_PREFIX = ".staging-"
# file names Windows keeps for devices, with any extension ("con", "nul.txt"): a model folder cannot have them
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_DRIVE = re.compile(r"[A-Za-z]:")
SETTINGS_SUFFIX = ".toml"  # <models>/NAME.toml beside <models>/NAME/


class StoreError(Exception):
    """A store operation that cannot be done; the message is meant for the user."""


class BrokenModelError(StoreError):
    """A model is in the store but its settings file or manifest cannot be read (the message names the file)."""


def check_name(name: str) -> str:
    if not name or len(name) > 128 or any(c.isspace() or not c.isprintable() for c in name):
        raise StoreError(f"invalid model name {name!r}: use 1-128 printable characters without spaces")
    if name in (".", "..") or name.startswith(STAGING_PREFIX):
        raise StoreError(f"invalid model name {name!r}")
    if "/" in name:  # a name with '/' would read as a hub id or an alias (see `get`)
        raise StoreError(f"invalid model name {name!r}: '/' is for hub ids and aliases; use ':' or '-' instead")
    if name.lower().endswith(SETTINGS_SUFFIX):  # its folder would be the settings file of another name
        raise StoreError(f"invalid model name {name!r}: a name cannot end in {SETTINGS_SUFFIX}")
    if name.split(".")[0].lower() in _WINDOWS_DEVICES or name.endswith("."):
        raise StoreError(f"invalid model name {name!r}: Windows cannot use it as a file name; pick another")
    if not names_a_file(name):  # '\\', a drive ("c:"), dots only
        raise StoreError(f"invalid model name {name!r}: it would not name a file inside the store")
    if len(_file_stem(name)) > 200:  # characters other than letters, digits and -_.+@ take 3 to 12 in a file name
        raise StoreError(f"invalid model name {name!r}: too long as a file name; use a shorter one")
    return name


def names_a_file(name: str) -> bool:
    """Whether `name` can be a file name inside the models folder: not empty, not dots only ('.', '..'), no path
    separator, not a drive ('C:'), no control character, no end that Windows trims ('x.' opens 'x')."""
    return (
        bool(name)
        and name.strip(".") != ""
        and "/" not in name
        and "\\" not in name
        and name.isprintable()
        and not _DRIVE.fullmatch(name)
        and not name.endswith((".", " "))
        and not name.startswith(STAGING_PREFIX)
    )


def _lock(path: Path) -> IO[bytes] | None:
    """An exclusive lock on the file `path` (made if need be), held until closed; None while another holds it.
    The OS releases it when its process dies, so a lock that can be taken marks what a dead process left."""
    handle = open(path, "a+b")
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]  # Windows only
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # open elsewhere for a moment (Windows): the next `clean_staging` takes it
        pass


def weights_size(folder: Path) -> int:
    """A model's memory estimate: the size of its files on disk (the weights dominate)."""
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except OSError:
        return 0


def _file_stem(name: str) -> str:
    # ':' and '/' are common in model names (llama3.2:1b) but not portable in file names.
    return quote(name, safe="-_.+@")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ModelConfig
    folder: Path
    manifest: dict[str, Any]

    @property
    def task(self) -> str:
        return self.manifest.get("task", "chat")

    @property
    def created(self) -> int:
        """Last modification time of the name (config or weights), as OpenAI's `created`; read with the entry
        (no file access here: a folder removed since then, or a slow disk, cannot fail or stall a listing)."""
        folder_mtime = self.manifest.get("_folder_mtime")
        if folder_mtime is None:
            folder_mtime = self.folder.stat().st_mtime
        return int(max(folder_mtime, self.manifest.get("_config_mtime", 0)))


class ModelStore:
    """The models folder `models_dir`: every model's weights and settings (see the module's docstring)."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)

    def path_of(self, name: str, suffix: str = "") -> Path:
        """The one way a name (or a settings file's `weights`) becomes a path: `<models>/NAME<suffix>`, the name
        escaped; StoreError for a name that could point anywhere else (see `names_a_file`)."""
        if not names_a_file(name):
            raise StoreError(f"invalid model name {name!r}: not a name in the store ({self.models_dir})")
        path = self.models_dir / f"{_file_stem(name)}{suffix}"
        if os.path.dirname(os.path.abspath(path)) != os.path.abspath(self.models_dir):  # never, with the escaping
            raise StoreError(f"invalid model name {name!r}: {path} is outside the store")
        return path

    # ---- reading -------------------------------------------------------
    def _config_path(self, name: str) -> Path:
        return self.path_of(name, SETTINGS_SUFFIX)

    def _settings_files(self) -> list[Path]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p for p in self.models_dir.glob(f"*{SETTINGS_SUFFIX}") if p.is_file())

    def _read_config(self, name: str) -> tuple[ModelConfig, float] | None:
        path = self._config_path(name)
        if not os.path.isfile(path):  # (False, not an error, for a name too long to be a file)
            return None
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            return ModelConfig(**data), path.stat().st_mtime
        except FileNotFoundError:  # removed (`rm`) between the look and the read
            return None
        except ValidationError as exc:
            raise BrokenModelError(f"{path}: {describe(exc)}") from exc
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            reason = " ".join(str(exc).split())
            raise BrokenModelError(f"{path}: {reason}") from exc

    def _read_manifest(self, folder: Path) -> dict[str, Any] | None:
        path = folder / MANIFEST
        if not os.path.isfile(path):
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            mtime = folder.stat().st_mtime
        except FileNotFoundError:  # no model here (or removed while being read)
            return None
        except (OSError, ValueError) as exc:  # unreadable or not JSON: a problem of this model only
            raise BrokenModelError(f"{path}: {' '.join(str(exc).split())}") from exc
        if not isinstance(manifest, dict):
            raise BrokenModelError(f"{path}: not a JSON object")
        return {**manifest, "_folder_mtime": mtime}

    def names(self) -> list[str]:
        found = {unquote(p.stem) for p in self._settings_files()}
        if self.models_dir.is_dir():
            found.update(
                unquote(p.name)
                for p in self.models_dir.iterdir()
                if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
            )
        return sorted(n for n in found if self._readable(n) is not None)

    def _readable(self, name: str) -> ModelEntry | None:
        """The entry, or None when it has no weights or its config is broken (see `problems()`)."""
        try:
            return self._entry_or_none(name)
        except StoreError:
            return None

    def problems(self) -> list[str]:
        """One line per settings file that cannot be used (unreadable, or its weights or manifest not); such a
        model is left out of listings."""
        found = []
        for path in self._settings_files():
            try:
                self._entry_or_none(unquote(path.stem))
            except StoreError as exc:
                found.append(str(exc))
        return found

    def _entry_or_none(self, name: str) -> ModelEntry | None:
        read = self._read_config(name)
        config, mtime = read if read else (ModelConfig(), 0.0)
        try:
            folder = self.path_of(config.weights or name)
        except StoreError:  # a hand-edited `weights = ".."`: never a folder outside the store
            raise BrokenModelError(
                f"{self._config_path(name)}: weights {config.weights!r} is not a model folder in the store"
            ) from None
        manifest = self._read_manifest(folder)
        if manifest is None or (read is None and manifest.get("unlisted")):
            return None
        return ModelEntry(name, config, folder, {**manifest, "_config_mtime": mtime})

    def entries(self) -> list[ModelEntry]:
        return [e for e in (self._readable(n) for n in self.names()) if e is not None]

    def get(self, name_or_alias: str) -> ModelEntry:
        entry = self._entry_or_none(name_or_alias) if names_a_file(name_or_alias) else None
        if entry is not None:
            return entry
        for entry in self.entries():
            if name_or_alias in entry.config.aliases:
                return entry
        raise StoreError(f"model '{name_or_alias}' is not in the store ({self.models_dir})")

    def exists(self, name: str) -> bool:
        return names_a_file(name) and (self._entry_or_none(name) is not None or os.path.isfile(self._config_path(name)))

    def check_folders(self) -> None:
        """Refuse a store that would lie inside a file (a mistyped $ORTSERVE_HOME or --models-dir), where every
        listing would be silently empty and every write would fail."""
        path = self.models_dir
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir():
            raise StoreError(
                f"the model store cannot be at {self.models_dir}: {path} is a file, not a folder "
                "(check --models-dir, $ORTSERVE_HOME and $ORTSERVE_MODELS)"
            )

    def check_not_an_alias(self, name: str) -> None:
        """Refuse a new name that is another model's alias: it would silently take that alias's requests."""
        for entry in self.entries():
            if name in entry.config.aliases and entry.name != name:
                raise StoreError(
                    f"'{name}' is an alias of model '{entry.name}'; remove it from the aliases in "
                    f"{self._config_path(entry.name)} first, or pick another name"
                )

    # ---- writing -------------------------------------------------------
    def write_config(self, name: str, config: ModelConfig) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        data = config.model_dump(exclude_none=True, exclude_defaults=True)
        if config.weights:
            data["weights"] = config.weights
        target = self._config_path(name)
        tmp = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(f"# ortserve settings for model '{name}'\n" + tomli_w.dumps(data), encoding="utf-8")
        os.replace(tmp, target)

    @contextmanager
    def staging(self, name: str, force: bool = False) -> Iterator[Path]:
        """A temporary folder inside the store that becomes models/NAME only if the block succeeds.

        Ctrl-C or an exception removes it: nothing half-written is ever visible as a model. A lock file beside
        it, held until the end, tells `clean_staging` (a `serve` starting meanwhile) that it is in use.
        """
        check_name(name)
        if self.exists(name) and not force:
            raise StoreError(f"model '{name}' already exists; use --force to replace it")
        self.check_not_an_alias(name)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.models_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        lock_path = tmp.with_name(f"{tmp.name}.lock")
        lock = _lock(lock_path)  # taken before the folder exists: never a moment it looks abandoned
        try:
            tmp.mkdir()
            yield tmp
            final = self.path_of(name)
            if final.exists():
                old = final.with_name(f"{STAGING_PREFIX}old-{uuid.uuid4().hex}")
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if lock is not None:
                lock.close()
            _unlink_quietly(lock_path)

    def add(self, name: str, folder: Path, manifest: dict[str, Any], config: ModelConfig | None = None) -> None:
        """Write the manifest into a staged folder and the name's config (called inside `staging`)."""
        manifest = {"name": name, "created": datetime.now(UTC).isoformat(timespec="seconds"), **manifest}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        self.write_config(name, config or ModelConfig())

    def copy(self, src: str, dst: str) -> ModelEntry:
        check_name(dst)
        entry = self.get(src)
        if self.exists(dst):
            raise StoreError(f"model '{dst}' already exists")
        self.check_not_an_alias(dst)
        config = entry.config.model_copy(update={"weights": entry.config.weights or entry.name, "aliases": []})
        self.write_config(dst, config)
        return self.get(dst)

    def remove(self, name: str) -> None:
        """Remove a name; its weights go when no other name uses them.

        A running server that has the model loaded keeps serving the requests in flight: on Linux and macOS
        its open (mapped) files outlive the deletion. On Windows open files cannot be deleted or moved, so the
        folder is hidden at once (its manifest renamed) and deleted later (by the next `rm` or `serve` start)."""
        try:
            entry, broken = self._entry_or_none(name), False
        except BrokenModelError:  # its settings or manifest cannot be read: `rm` is how to be rid of it
            entry, broken = None, True
        config_path = self._config_path(name)
        if entry is None and not broken and not os.path.isfile(config_path):
            owner = next((e.name for e in self.entries() if name in e.config.aliases), None)
            if owner is not None:
                raise StoreError(
                    f"'{name}' is an alias of model '{owner}', not a model; remove it from the "
                    f"aliases in {self._config_path(owner)}, or remove '{owner}'"
                )
            raise StoreError(f"model '{name}' is not in the store ({self.models_dir})")
        config_path.unlink(missing_ok=True)
        if broken:  # what it served is unknown: its own folder goes unless a readable name serves it
            entry = ModelEntry(name, ModelConfig(), self.path_of(name), {})
            if not entry.folder.is_dir():
                entry = None
        if entry is not None:
            weights = entry.config.weights or entry.name
            if not any((e.config.weights or e.name) == weights for e in self.entries() if e.name != name):
                self._hide_or_delete(entry.folder)  # no other name serves these weights
            elif weights == name:
                # other names still serve these weights: keep the folder, stop listing it under its own name
                manifest = {k: v for k, v in (self._read_manifest(entry.folder) or {}).items() if not k.startswith("_")}
                text = json.dumps({**manifest, "unlisted": True}, indent=2)
                (entry.folder / MANIFEST).write_text(text, encoding="utf-8")
        self._sweep_removed()

    @staticmethod
    def _delete_folder(folder: Path) -> bool:
        """Delete a model folder; False when its files are in use (Windows) and it has to wait."""
        trash = folder.with_name(f"{STAGING_PREFIX}removed-{uuid.uuid4().hex}")
        try:
            os.replace(folder, trash)  # the name is free at once, even if deleting the files takes a while
        except OSError:
            return False
        shutil.rmtree(trash, ignore_errors=True)  # what is still open stays behind until the next sweep
        return True

    def _hide_or_delete(self, folder: Path) -> None:
        if not self._delete_folder(folder):  # Windows, files in use: hide the model now, delete it later
            os.replace(folder / MANIFEST, folder / REMOVED_MANIFEST)

    def _sweep_removed(self) -> None:
        """Delete what removed models left because their files were in use, where they no longer are."""
        if not self.models_dir.is_dir():
            return
        for p in self.models_dir.glob(f"{STAGING_PREFIX}removed-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.models_dir.glob(f"*/{REMOVED_MANIFEST}"):
            if not (p.parent / MANIFEST).exists():
                self._delete_folder(p.parent)

    def clean_staging(self) -> None:
        """Remove leftovers of a conversion that was killed hard (kill -9, power loss) and of removed models;
        a conversion still running (its lock held) is left alone."""
        if self.models_dir.is_dir():
            for p in self.models_dir.glob(f"{STAGING_PREFIX}*"):
                if p.suffix == ".lock":
                    continue
                lock_path = p.with_name(f"{p.name}.lock")
                lock = _lock(lock_path) if lock_path.exists() else None
                if lock is None and lock_path.exists():
                    continue  # a conversion in progress
                shutil.rmtree(p, ignore_errors=True)
                if lock is not None:
                    lock.close()
            for lock_path in self.models_dir.glob(f"{STAGING_PREFIX}*.lock"):
                lock = _lock(lock_path)
                if lock is not None:  # its process is gone (and so, now, is its folder)
                    lock.close()
                    if not lock_path.with_suffix("").exists():
                        _unlink_quietly(lock_path)
        self._sweep_removed()
