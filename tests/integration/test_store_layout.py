"""A store is one folder (`<models>/NAME/` + `<models>/NAME.toml`), through the real CLI: settings beside the
weights, the old `configs/models/` moved in once, a store named by --models-dir never reading another's
settings, and names that would point outside the store refused by every command, with decoys around it."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from ortserve.core.store import MANIFEST
from tests.conftest import run_cli

DECOY = {"task": "chat", "precision": "int4", "name": "decoy"}


def _model(models: Path, name: str) -> None:
    (models / name).mkdir(parents=True)
    (models / name / MANIFEST).write_text(json.dumps({"task": "chat", "precision": "int4"}), encoding="utf-8")


def _listed(home: Path, capsys, *argv: str) -> dict[str, list[str]]:
    assert run_cli(home, "list", "--json", *argv) == 0
    return {m["name"]: m["aliases"] for m in json.loads(capsys.readouterr().out)}


def _taken_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


def test_settings_live_beside_the_weights(tmp_path, capsys):
    _model(tmp_path / "models", "base")
    assert run_cli(tmp_path, "cp", "base", "copy") == 0
    capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["base", "copy.toml"]
    assert not (tmp_path / "configs").exists()
    assert _listed(tmp_path, capsys) == {"base": [], "copy": []}


def test_old_settings_are_moved_into_the_store_once(tmp_path, capsys, caplog):
    _model(tmp_path / "models", "base")
    old = tmp_path / "configs" / "models"
    old.mkdir(parents=True)
    (old / "base.toml").write_text('aliases = ["gpt-4o-mini"]\n', encoding="utf-8")
    (old / "copy.toml").write_text('weights = "base"\n', encoding="utf-8")
    (old / "kept.toml").write_text('weights = "base"\nowned_by = "old"\n', encoding="utf-8")
    (tmp_path / "models" / "kept.toml").write_text('weights = "base"\n', encoding="utf-8")  # already there: wins
    with caplog.at_level(logging.INFO, logger="ortserve"):
        assert _listed(tmp_path, capsys) == {"base": ["gpt-4o-mini"], "copy": [], "kept": []}
    moved = [r.getMessage() for r in caplog.records if "moved the settings file" in r.getMessage()]
    assert len(moved) == 2 and "base.toml" in moved[0] and "copy.toml" in moved[1]
    assert [p.name for p in old.iterdir()] == ["kept.toml"]  # left where it was, no longer read
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ortserve"):
        assert _listed(tmp_path, capsys) == {"base": ["gpt-4o-mini"], "copy": [], "kept": []}
    assert not [r for r in caplog.records if "moved" in r.getMessage()]  # once


def test_serve_moves_them_and_says_so_at_its_log_level(tmp_path):
    from tests.integration.test_cli_mistakes import _ortserve

    _model(tmp_path / "models", "base")
    (tmp_path / "configs" / "models").mkdir(parents=True)
    (tmp_path / "configs" / "models" / "base.toml").write_text("num_ctx = 2048\n", encoding="utf-8")
    (tmp_path / "configs" / "server.toml").write_text('[server]\nlog_level = "warning"\n', encoding="utf-8")
    with _taken_port() as taken:  # serve stops there, after opening the store
        port = str(taken.getsockname()[1])
        quiet = _ortserve(tmp_path, "serve", "--no-bootstrap", "--port", port)
        assert (tmp_path / "models" / "base.toml").is_file() and "moved" not in quiet.stderr  # WARNING and up
        (tmp_path / "models" / "base.toml").rename(tmp_path / "configs" / "models" / "base.toml")
        said = _ortserve(tmp_path, "serve", "--no-bootstrap", "--port", port, "--log-level", "info")
    assert said.returncode == 2 and "INFO ortserve.core.home: moved the settings file" in said.stderr
    assert (tmp_path / "models" / "base.toml").is_file()


def test_a_store_named_elsewhere_never_reads_another_stores_settings(tmp_path, capsys):
    home, other = tmp_path / "home", tmp_path / "elsewhere"
    _model(home / "models", "x")
    (home / "configs" / "models").mkdir(parents=True)
    (home / "configs" / "models" / "x.toml").write_text('aliases = ["home-alias"]\n', encoding="utf-8")
    _model(other, "x")
    assert _listed(home, capsys, "--models-dir", str(other)) == {"x": []}
    assert run_cli(home, "cp", "x", "y", "--models-dir", str(other)) == 0
    capsys.readouterr()
    assert (other / "y.toml").is_file() and not (home / "models" / "y.toml").exists()
    with _taken_port() as taken:
        assert (
            run_cli(home, "serve", "--no-bootstrap", "--models-dir", str(other), "--port", str(taken.getsockname()[1]))
            == 2
        )
    assert (home / "configs" / "models" / "x.toml").is_file() and not (other / "x.toml").exists()
    assert _listed(home, capsys) == {"x": ["home-alias"]}  # its own store: moved in now


@pytest.fixture
def decoys(tmp_path) -> Path:
    """A store holding `base`, with a model-looking manifest at the top of its models folder and just above it."""
    home = tmp_path / "home"
    _model(home / "models", "base")
    (home / "models" / MANIFEST).write_text(json.dumps(DECOY), encoding="utf-8")
    (home / MANIFEST).write_text(json.dumps(DECOY), encoding="utf-8")
    (tmp_path / "escaped.toml").write_text("# a file beside the home\n", encoding="utf-8")
    return home


def _intact(home: Path) -> None:
    assert json.loads((home / "models" / MANIFEST).read_text(encoding="utf-8")) == DECOY
    assert json.loads((home / MANIFEST).read_text(encoding="utf-8")) == DECOY
    assert (home.parent / "escaped.toml").read_text(encoding="utf-8") == "# a file beside the home\n"
    assert (home / "models" / "base" / MANIFEST).is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ("rm", "."),
        ("rm", ".."),
        ("rm", "..\\escaped"),
        ("rm", "C:"),
        ("rm", "\\\\server\\share"),
        ("show", "."),
        ("show", ".."),
        ("cp", "..", "escaped"),
        ("cp", ".", "copy"),
        ("cp", "base", ".."),
        ("cp", "base", "../escaped"),
        ("cp", "base", "..\\escaped"),
        ("cp", "base", "C:"),
        ("create", ".."),
        ("convert", "nowhere", "--name", ".."),
        ("convert", "nowhere", "--name", "..\\escaped"),
    ],
)
def test_a_name_outside_the_store_is_refused_by_every_command(decoys, capsys, argv):
    assert run_cli(decoys, *argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    _intact(decoys)
    assert sorted(p.name for p in (decoys / "models").iterdir()) == ["base", MANIFEST]


def test_settings_whose_weights_point_outside_serve_nothing_and_rm_takes_only_them(decoys, capsys):
    (decoys / "models" / "escaped.toml").write_text('weights = ".."\n', encoding="utf-8")  # written by hand
    assert _listed(decoys, capsys) == {"base": []}  # skipped, with a warning naming the file
    assert run_cli(decoys, "list") == 0 and "escaped.toml: weights '..'" in capsys.readouterr().err
    assert run_cli(decoys, "cp", "escaped", "again") == 1
    assert run_cli(decoys, "rm", "escaped") == 0
    assert not (decoys / "models" / "escaped.toml").exists()
    _intact(decoys)
