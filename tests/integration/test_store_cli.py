"""`ortserve list/show/cp/rm` on a copy of the converted fixture store."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from ortserve.core.store import ModelStore, StoreError
from tests.conftest import run_cli


@pytest.fixture
def home(tmp_path, chat_store_home):
    """A private copy of the chat store (tests here change it)."""
    target = tmp_path / "home"
    shutil.copytree(chat_store_home / "models" / "tiny-llama", target / "models" / "tiny-llama")
    shutil.copy(chat_store_home / "models" / "tiny-llama.toml", target / "models" / "tiny-llama.toml")
    return target


def _store(home) -> ModelStore:
    return ModelStore(home / "models")


def test_list_shows_models(home, capsys):
    assert run_cli(home, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "TASK", "PRECISION"]
    assert lines[1].split()[:3] == ["tiny-llama", "chat", "fp32"]
    assert run_cli(home, "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["task"], r["weights"]) for r in rows] == [("tiny-llama", "chat", "tiny-llama")]
    assert rows[0]["size"] > 100_000


def test_show_prints_manifest_and_settings(home, capsys):
    assert run_cli(home, "show", "tiny-llama") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["validation"]["greedy_match"] == "3/3"
    assert info["manifest"]["precision"] == "fp32" and info["settings"]["device"] == "auto"
    assert run_cli(home, "show", "nope") == 1
    assert "error: model 'nope' is not in the store" in capsys.readouterr().err


def test_cp_adds_a_name_sharing_the_weights(home, capsys):
    assert run_cli(home, "cp", "tiny-llama", "gpt-3.5-turbo") == 0
    store = _store(home)
    copy = store.get("gpt-3.5-turbo")
    assert copy.folder == store.get("tiny-llama").folder  # no copy of the weights
    assert sorted(p.name for p in (home / "models").iterdir() if p.is_dir()) == ["tiny-llama"]  # no new folder
    assert store.names() == ["gpt-3.5-turbo", "tiny-llama"]
    # names with ':' (ollama style) work too, and cp refuses to overwrite
    assert run_cli(home, "cp", "gpt-3.5-turbo", "llama3.2:1b") == 0
    assert store.get("llama3.2:1b").folder == copy.folder
    assert run_cli(home, "cp", "tiny-llama", "llama3.2:1b") == 1
    assert "already exists" in capsys.readouterr().err


def test_rm_keeps_weights_while_another_name_uses_them(home):
    store = _store(home)
    assert run_cli(home, "cp", "tiny-llama", "copy") == 0
    assert run_cli(home, "rm", "tiny-llama") == 0
    assert store.names() == ["copy"]
    assert (store.get("copy").folder / "model.onnx").is_file()
    with pytest.raises(StoreError):
        store.get("tiny-llama")
    assert run_cli(home, "rm", "copy") == 0
    assert store.names() == [] and list((home / "models").iterdir()) == []
    assert run_cli(home, "rm", "copy") == 1


def test_aliases_resolve_and_bad_names_are_refused(home):
    from ortserve.core.model_config import ModelConfig

    store = _store(home)
    store.write_config("tiny-llama", ModelConfig(aliases=["tl", "org/model"]))
    assert store.get("tl").name == "tiny-llama" and store.get("org/model").name == "tiny-llama"
    for bad in ("", "has space", "x" * 129):
        with pytest.raises(StoreError):
            store.copy("tiny-llama", bad)


def test_broken_config_is_skipped_with_a_warning(home, capsys):
    assert run_cli(home, "cp", "tiny-llama", "other") == 0
    capsys.readouterr()
    (home / "models" / "tiny-llama.toml").write_text("num_ctx = 'many'\n")
    assert run_cli(home, "list") == 0
    captured = capsys.readouterr()
    assert "warning: skipped" in captured.err and "tiny-llama.toml" in captured.err
    assert [ln.split()[0] for ln in captured.out.splitlines()[1:]] == ["other"]  # the others still list
    assert run_cli(home, "show", "tiny-llama") == 1
    assert "tiny-llama.toml" in capsys.readouterr().err


def test_serve_on_a_port_in_use_says_so_before_touching_the_store(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_cli(tmp_path, "serve", "--no-bootstrap", "--host", "127.0.0.1", "--port", str(port)) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err
    assert not (tmp_path / "models").exists()  # refused before the store is touched
