"""The model store (core/store.py) under change: `rm` while a server holds the files (Windows), copies
sharing weights, entries read before a removal, and `serve` starting while a conversion runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ortserve.core import store as store_module
from ortserve.core.store import MANIFEST, REMOVED_MANIFEST, ModelStore


@pytest.fixture
def store(tmp_path) -> ModelStore:
    store = ModelStore(tmp_path / "models")
    for name in ("a", "b", "c"):
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / MANIFEST).write_text(json.dumps({"task": "chat", "precision": "int4"}), encoding="utf-8")
        (folder / "model.onnx.data").write_bytes(b"\0" * 100)
    return store


def test_rm_of_a_model_whose_files_are_in_use_hides_it_then_deletes_it(store, monkeypatch):
    """Windows cannot move or delete the files of a loaded model: `rm` hides it; a later sweep deletes it."""
    real_replace = store_module.os.replace
    in_use = {store.models_dir / "a"}

    def replace(src, dst):
        if Path(src) in in_use:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", replace)
    store.remove("a")
    assert "a" not in store.names() and not store.exists("a")
    assert (store.models_dir / "a" / REMOVED_MANIFEST).is_file()  # still there, in use
    store.remove("b")  # every rm sweeps; "a" is still in use
    assert (store.models_dir / "a").is_dir() and not (store.models_dir / "b").exists()
    in_use.clear()  # the server unloaded it
    store.clean_staging()
    assert not (store.models_dir / "a").exists() and store.names() == ["c"]
    assert not list(store.models_dir.glob(".*"))


def test_rm_of_a_copy_keeps_the_shared_weights_listed(store):
    store.copy("a", "a2")
    store.remove("a2")
    assert store.names() == ["a", "b", "c"]
    store.copy("a", "a3")
    store.remove("a")  # a3 still serves a's weights: the folder stays, unlisted
    assert store.names() == ["a3", "b", "c"] and (store.models_dir / "a").is_dir()
    store.remove("a3")  # the last name: the weights go
    assert not (store.models_dir / "a").exists()


def test_an_entry_read_before_its_model_was_removed_still_lists(store):
    entries = store.entries()  # /v1/models reads the store, then lists what it read
    store.remove("a")
    assert entries[0].name == "a" and entries[0].created > 0  # no file access after the read


def test_a_name_removed_while_it_is_being_read_is_not_in_the_store(store, monkeypatch):
    # the server checks an idle model's entry on a thread while `rm` deletes its settings file (CI saw a
    # FileNotFoundError traceback): a file gone between the look and the read is a name no longer there
    store.copy("a", "gone")
    store.remove("gone")
    monkeypatch.setattr(store_module.os.path, "isfile", lambda path: True)  # looked before the rm
    with pytest.raises(store_module.StoreError, match="not in the store"):
        store.get("gone")


def test_a_serve_starting_during_a_conversion_leaves_it_alone(store):
    with store.staging("new") as tmp:
        (tmp / "model.onnx").write_bytes(b"\0")
        ModelStore(store.models_dir).clean_staging()  # `ortserve serve` starts
        assert (tmp / "model.onnx").is_file()
        store.add("new", tmp, {"task": "chat"})
    assert "new" in store.names()
    (store.models_dir / ".staging-left-by-a-kill-9").mkdir()  # what a conversion killed hard leaves
    (store.models_dir / ".staging-dead").mkdir()
    (store.models_dir / ".staging-dead.lock").write_bytes(b"")  # a lock no process holds any more
    store.clean_staging()
    assert not list(store.models_dir.glob(".*"))
