"""Typical mistakes at the command line: each is a one-line `error: ...` (or argparse's usage error) with a
non-zero exit, never a traceback and never a silent wrong result. No conversion runs here: the stores are
hand-made manifests, the "hub" is a closed port on 127.0.0.1, and the "other server" a stdlib one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ortserve.core.model_config import ModelConfig
from ortserve.core.store import MANIFEST, ModelStore
from ortserve.server.settings import ServerSettings
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path) -> Path:
    """A store holding `base` (aliases: gpt-4o-mini), a chat model known only by its manifest."""
    home = tmp_path / "home"
    folder = home / "models" / "base"
    folder.mkdir(parents=True)
    manifest = {"task": "chat", "precision": "int4", "validation": {"worst_sentence": "Emoji 🙂 ∑"}}
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    _store(home).write_config("base", ModelConfig(aliases=["gpt-4o-mini"]))
    return home


def _store(home: Path) -> ModelStore:
    return ModelStore(home / "models")


def _ortserve(home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """`ortserve` in a subprocess (for what an in-process run cannot set: the console, huggingface_hub's env)."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORTSERVE_", "HF_")) and not k.lower().endswith("_proxy")
    }
    environment.update(ORTSERVE_HOME=str(home), HF_HOME=str(home / "hf"), **env)
    return subprocess.run(
        [sys.executable, "-m", "ortserve.server.cli", *argv],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- convert -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "offline, says",
    [
        ("0", "the Hugging Face hub could not be reached"),
        ("1", "not in the Hugging Face cache while HF_HUB_OFFLINE is set"),
    ],
)
def test_convert_from_a_hub_that_cannot_be_reached_says_so(tmp_path, offline, says):
    with socket.socket() as closed:  # bound, never listening: a connection is refused at once
        closed.bind(("127.0.0.1", 0))
        done = _ortserve(
            tmp_path,
            "convert",
            "someone/some-model",
            HF_HUB_OFFLINE=offline,
            HF_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}",
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: someone/some-model: no such local folder, and {says}" in done.stderr.splitlines()[-1]


def test_convert_of_a_config_whose_model_type_is_not_text(tmp_path, capsys):
    source = tmp_path / "odd"
    source.mkdir()
    (source / "config.json").write_text('{"model_type": ["llama"]}', encoding="utf-8")
    assert run_cli(tmp_path, "convert", str(source)) == 1
    assert "config.json: has no model_type" in capsys.readouterr().err


def test_convert_dot_is_named_after_the_folder(tmp_path, monkeypatch):
    from ortserve.conversion.source import default_name

    (tmp_path / "My-Model").mkdir()
    monkeypatch.chdir(tmp_path / "My-Model")
    assert [default_name(s) for s in (".", "./", "..", "owner/Name")] == [
        "my-model",
        "my-model",
        tmp_path.name.lower(),
        "name",
    ]


@pytest.mark.parametrize(
    "name, says",
    [
        ("org/model", "'/' is for hub ids and aliases"),  # created, then neither `show` nor `get` could find it
        ("con", "Windows cannot use it"),
        ("NUL.v2", "Windows cannot use it"),
        ("v1.", "Windows cannot use it"),
        ("é" * 100, "too long as a file name"),  # 1,200 characters once quoted: a traceback from the file system
    ],
)
def test_names_the_store_cannot_hold_are_refused(home, capsys, name, says):
    assert run_cli(home, "convert", str(home), "--name", name) == 1  # refused before the source is read
    assert f"invalid model name {name!r}: {says}" in capsys.readouterr().err
    assert run_cli(home, "cp", "base", name) == 1
    assert says in capsys.readouterr().err
    assert _store(home).names() == ["base"]


def test_convert_of_a_local_folder_refuses_a_revision(home, tmp_path, capsys):
    (tmp_path / "folder").mkdir()  # was silently converted as it is, whatever the revision
    assert run_cli(home, "convert", str(tmp_path / "folder"), "--revision", "v2") == 1
    assert f"error: {tmp_path / 'folder'}: --revision is for hub ids only, not local folders" in capsys.readouterr().err
    assert _store(home).names() == ["base"]


@pytest.mark.parametrize("quiet", [(), ("--quiet",)])
def test_convert_force_names_the_copies_that_now_serve_the_new_weights(home, tmp_path, monkeypatch, capsys, quiet):
    import ortserve.conversion.embedding

    def convert_embedding(src, out, **kwargs):  # stands in for a real conversion
        (out / "model.onnx").write_bytes(b"new")
        return {"task": "embedding", "precision": "fp32"}

    monkeypatch.setattr(ortserve.conversion.embedding, "convert_embedding", convert_embedding)
    for copy in ("x", "y"):
        _store(home).copy("base", copy)
    (tmp_path / "source").mkdir()
    assert (
        run_cli(home, "convert", str(tmp_path / "source"), "--name", "base", "--task", "embedding", "--force", *quiet)
        == 0
    )
    assert "note: x, y share these weights and now serve the new ones" in capsys.readouterr().err
    assert _store(home).get("y").task == "embedding"  # the behaviour stays: they serve the new weights
    assert run_cli(home, "convert", str(tmp_path / "source"), "--name", "x", "--task", "embedding", "--force") == 0
    assert "note:" not in capsys.readouterr().err  # nothing shares x's own new weights


# ---- show / cp / rm / create --------------------------------------------------------------------------
def test_a_name_too_long_for_a_file_is_simply_not_there(home, capsys):
    assert run_cli(home, "show", ":" * 128) == 1
    assert "is not in the store" in capsys.readouterr().err


def test_aliases_are_never_shadowed_and_rm_of_one_says_whose_it_is(home, capsys, tmp_path):
    assert run_cli(home, "rm", "gpt-4o-mini") == 1
    assert "'gpt-4o-mini' is an alias of model 'base', not a model; remove it from the aliases in" in (
        capsys.readouterr().err
    )
    assert run_cli(home, "cp", "base", "gpt-4o-mini") == 1  # would silently take the alias's requests
    assert "'gpt-4o-mini' is an alias of model 'base'" in capsys.readouterr().err
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM base\nPARAMETER temperature 0.1\n", encoding="utf-8")
    assert run_cli(home, "create", "gpt-4o-mini", "-f", str(modelfile)) == 1
    assert "is an alias of model 'base'" in capsys.readouterr().err
    assert _store(home).names() == ["base"]


def test_create_again_says_it_updated_the_name(home, tmp_path, capsys):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM base\nPARAMETER temperature 0.1\n", encoding="utf-8")
    assert run_cli(home, "create", "mario", "-f", str(modelfile)) == 0
    assert capsys.readouterr().out.startswith("created 'mario' from 'base'")
    assert run_cli(home, "create", "mario", "-f", str(modelfile)) == 0  # said "created" again
    assert capsys.readouterr().out.startswith("updated the settings of 'mario' from 'base'")


@pytest.mark.parametrize("broken", ["settings", "manifest"])
def test_rm_removes_a_model_that_cannot_be_read(home, capsys, broken):
    if broken == "settings":
        (home / "models" / "base.toml").write_text("num_ctx = 'many'\n", encoding="utf-8")
    else:
        (home / "models" / "base" / MANIFEST).write_text("{not json", encoding="utf-8")
    assert run_cli(home, "list") == 0
    assert "warning: skipped" in capsys.readouterr().err or broken == "manifest"
    assert run_cli(home, "rm", "base") == 0
    assert not list((home / "models").iterdir())  # neither its folder nor its settings


def test_rm_of_broken_settings_keeps_weights_another_name_serves(home):
    _store(home).copy("base", "copy")
    (home / "models" / "base.toml").write_text("[defaults]\ntemperature = 9\n", encoding="utf-8")
    assert run_cli(home, "rm", "base") == 0
    assert _store(home).names() == ["copy"] and (_store(home).get("copy").folder / MANIFEST).is_file()


def test_broken_settings_are_named_in_plain_words(home, capsys):
    (home / "models" / "base.toml").write_text("num_ctx = 'many'\n", encoding="utf-8")
    assert run_cli(home, "show", "base") == 1
    err = capsys.readouterr().err
    assert "base.toml: num_ctx: Input should be a valid integer" in err and "errors.pydantic.dev" not in err


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "no such file (name the Modelfile with -f FILE)"),
        ("folder", "is a folder; name the Modelfile itself with -f FILE"),  # Windows says only "Permission denied"
        ("\ufeffFROM base\n".encode("utf-16"), "not UTF-8 text (save it as UTF-8)"),  # Notepad's "Unicode"
        (b"\x7fELF\x02\x01\x01\x00\xff\xfe", "not UTF-8 text"),
        (b"", "the Modelfile has no FROM line"),
        (b"FROM nothere\n", "FROM nothere: not a model in the store, a local folder or a hub id"),
    ],
)
def test_create_with_a_modelfile_that_cannot_be_used(home, tmp_path, monkeypatch, capsys, content, says):
    monkeypatch.chdir(tmp_path)  # `create` reads ./Modelfile by default
    if content == "folder":
        (tmp_path / "Modelfile").mkdir()
    elif content is not None:
        (tmp_path / "Modelfile").write_bytes(content)
    assert run_cli(home, "create", "new") == 1
    assert says in capsys.readouterr().err
    assert _store(home).names() == ["base"]


def test_a_store_inside_a_file_is_refused_not_empty(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder", encoding="utf-8")
    assert run_cli(a_file, "list") == 1  # ORTSERVE_HOME is a file: the listing was silently empty
    assert f"{a_file} is a file, not a folder" in capsys.readouterr().err
    assert run_cli(tmp_path, "cp", "a", "b", "--models-dir", str(a_file / "models")) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert run_cli(tmp_path, "serve", "--no-bootstrap", "--port", "0", "--models-dir", str(a_file)) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_file_that_cannot_be_written_is_an_error_line(home, capsys):
    (home / "models" / "copy.toml").mkdir()  # where `cp` writes its settings
    assert run_cli(home, "cp", "base", "copy") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1


def test_a_console_that_cannot_show_a_character_gets_an_escape(home):
    done = _ortserve(home, "show", "base", PYTHONIOENCODING="cp1252")  # Windows, output redirected
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "Emoji \\U0001f642 \\u2211" in done.stdout


# ---- serve and its settings ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, says",
    [
        (b"[server\n", "server.toml is not valid TOML: Expected ']'"),
        (b"port = 9000\n[server]\n", "server.toml: port: settings go under the [server] line"),  # else ignored
        (b"server = 3\n", "'server' must be the [server] table"),
        (b"\xff\xfe[\x00s\x00", "server.toml is not UTF-8 text; save it as UTF-8"),
        (b'[server]\nport = "abc"\n', "invalid settings: port: Input should be a valid integer"),
    ],
)
def test_serve_with_a_broken_server_toml(tmp_path, capsys, content, says):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "server.toml").write_bytes(content)
    assert run_cli(tmp_path, "serve", "--no-bootstrap") == 2
    err = capsys.readouterr().err
    assert says in err and len(err.splitlines()) == 1
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "env, argv, says",
    [
        (
            {"ORTSERVE_PORT": "abc"},
            (),
            "port: Input should be a valid integer, unable to parse string as an integer (ORTSERVE_PORT='abc')",
        ),
        (
            {"ORTSERVE_KEEP_ALIVE": "forever"},
            (),
            "keep_alive: Value error, invalid duration 'forever': use seconds or "
            "units such as '5m', '1h30m', '10s' (ORTSERVE_KEEP_ALIVE='forever')",
        ),
        ({}, ("--port", "-1"), "port: Input should be greater than or equal to 0 (--port)"),
        ({}, ("--host", ""), "host: String should have at least 1 character (--host)"),  # else: every interface
        ({}, ("--api-key", ""), "api_key: String should have at least 1 character (--api-key)"),  # else: no key
        (
            {"ORTSERVE_LOG_LEVEL": "verbose"},
            (),
            "log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR' (ORTSERVE_LOG_LEVEL='verbose')",
        ),  # once a warning, then INFO
        ({"ORTSERVE_THREADS": "0"}, (), "threads: Input should be greater than or equal to 1 (ORTSERVE_THREADS='0')"),
        (
            {"ORTSERVE_NUM_PARALLEL": "4x"},
            (),
            "num_parallel: Input should be a valid integer, unable to parse string as "
            "an integer (ORTSERVE_NUM_PARALLEL='4x')",
        ),  # once silently 4
        ({}, ("--prefill-chunk", "0"), "prefill_chunk: Input should be greater than or equal to 1 (--prefill-chunk)"),
    ],
)
def test_serve_names_where_a_bad_setting_came_from(tmp_path, monkeypatch, capsys, env, argv, says):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run_cli(tmp_path, "serve", "--no-bootstrap", *argv) == 2
    assert f"error: invalid settings: {says}" in capsys.readouterr().err


@pytest.mark.parametrize("level", ["debug", ""])
def test_serve_takes_a_log_level_in_any_case_and_empty_as_unset(tmp_path, level):
    with socket.socket() as taken:  # serve stops there, after configuring its logging
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _ortserve(
            tmp_path, "serve", "--no-bootstrap", "--port", str(taken.getsockname()[1]), ORTSERVE_LOG_LEVEL=level
        )
    assert done.returncode == 2 and "error: cannot listen on" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_an_empty_environment_variable_is_unset(tmp_path, monkeypatch):
    for name in ("ORTSERVE_HOST", "ORTSERVE_PORT", "ORTSERVE_API_KEY"):
        monkeypatch.setenv(name, "")  # `ORTSERVE_HOST=` once bound every interface
    settings = ServerSettings.load(configs_dir=tmp_path)
    assert (settings.host, settings.port, settings.api_key) == ("127.0.0.1", 8000, None)


# ---- ps / info ----------------------------------------------------------------------------------------
class _Answers(BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, bytes]] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        status, body = self.answers.get(self.path, (404, b"File not found"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def other_server():
    """A web server that is not ortserve: set `answers[path] = (status, body)`; its base URL and answers."""
    answers: dict[str, tuple[int, bytes]] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Answers,), {"answers": answers}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize(
    "body",
    [
        b'{"models": 3}',
        b'{"models": [{"x": 1}]}',
        b'{"models": ["a"]}',
        b'{"models": [{"name": "a", "expires_in": "soon"}]}',
        b"<html>",
    ],
)
def test_ps_against_a_server_that_is_not_ortserve(home, other_server, capsys, body):
    url, answers = other_server
    answers["/api/ps"] = (200, body)
    assert run_cli(home, "ps", "--url", url) == 1
    assert (
        capsys.readouterr().err == f"error: {url}/api/ps did not answer as ortserve does (a JSON object with "
        "'models')\n"
    )


def test_ps_against_a_server_without_api_ps(home, other_server, capsys):
    url, _ = other_server
    assert run_cli(home, "ps", "--url", url) == 1
    assert capsys.readouterr().err == f"error: {url}/api/ps: 404 Not Found (is it an ortserve server?)\n"


def test_ps_and_info_take_host_port_and_refuse_what_is_no_url(home, capsys):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        assert run_cli(home, "ps", "--url", f"localhost:{port}") == 1  # was "unknown url type: localhost"
    assert f"error: no server answers at http://localhost:{port}:" in capsys.readouterr().err
    for command in ("ps", "info"):
        for bad in ("http://[::1", "http://host:abc", "http://127.0.0.1:99999", "ftp://host", ""):
            with pytest.raises(SystemExit) as exited:  # argparse: a usage error
                run_cli(home, command, "--url", bad)
            assert exited.value.code == 2
            assert f"argument --url: {bad!r} is not" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ps", "info"])
def test_ps_and_info_take_no_models_dir(home, capsys, command):
    with pytest.raises(SystemExit) as exited:
        run_cli(home, command, "--help")
    usage = capsys.readouterr().out
    assert exited.value.code == 0 and "--url" in usage and "--models-dir" not in usage  # listed, never used
    with pytest.raises(SystemExit) as exited:
        run_cli(home, command, "--models-dir", str(home))
    assert exited.value.code == 2 and "unrecognized arguments: --models-dir" in capsys.readouterr().err


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"status": "ok", "devices": ["x"]}', b"not json"])
def test_info_against_a_server_that_is_not_ortserve(home, other_server, capsys, body):
    url, answers = other_server
    answers["/health"] = (200, body)
    assert run_cli(home, "info", "--url", url, "--json") == 0  # the local report is still worth having
    server = json.loads(capsys.readouterr().out)["server"]
    assert server["error"] == f"{url}/health did not answer as ortserve does (is it another server?)"


def test_info_reaches_a_local_server_past_a_proxy(home, other_server):
    url, answers = other_server
    answers["/health"] = (200, b'{"status": "ok", "devices": {"base": "cpu"}}')
    proxy = "http://127.0.0.1:9"  # answers nothing; `ps` already went around it for a local server
    done = _ortserve(home, "info", "--url", url, "--json", HTTP_PROXY=proxy, http_proxy=proxy)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["server"] == {"url": url, "status": "ok", "devices": {"base": "cpu"}}
