"""The one settings loader (server/settings.py): every server setting comes from server.toml, ORTSERVE_* and a
`serve` flag, lowest first, and a bad value is refused naming its origin; the store is one folder."""

from __future__ import annotations

import pytest

from ortserve.server.cli import build_parser
from ortserve.server.settings import ServerSettings, SettingsError

RUNNING = ("threads", "num_parallel", "prefill_chunk", "log_level")


@pytest.fixture
def configs(tmp_path, monkeypatch):
    for name in ServerSettings.model_fields:
        monkeypatch.delenv(f"ORTSERVE_{name.upper()}", raising=False)
    (tmp_path / "server.toml").write_text(
        '[server]\nthreads = 2\nnum_parallel = 2\nprefill_chunk = 64\nlog_level = "warning"\n', encoding="utf-8"
    )
    return tmp_path


def test_the_running_settings_default_as_documented(tmp_path, monkeypatch):
    for name in RUNNING:
        monkeypatch.delenv(f"ORTSERVE_{name.upper()}", raising=False)
    settings = ServerSettings.load(configs_dir=tmp_path)
    assert [getattr(settings, name) for name in RUNNING] == [None, 4, 128, "INFO"]  # None: the physical cores


def test_server_toml_then_environment_then_flags(configs, monkeypatch):
    assert [getattr(ServerSettings.load(configs_dir=configs), n) for n in RUNNING] == [2, 2, 64, "WARNING"]
    monkeypatch.setenv("ORTSERVE_THREADS", "3")
    monkeypatch.setenv("ORTSERVE_LOG_LEVEL", "error")
    assert [getattr(ServerSettings.load(configs_dir=configs), n) for n in RUNNING] == [3, 2, 64, "ERROR"]
    args = build_parser().parse_args(
        ["serve", "--threads", "5", "--num-parallel", "8", "--prefill-chunk", "256", "--log-level", "debug"]
    )
    flags = {name: getattr(args, name) for name in RUNNING}
    assert flags == {"threads": 5, "num_parallel": 8, "prefill_chunk": 256, "log_level": "DEBUG"}
    settings = ServerSettings.load(configs_dir=configs, **flags)
    assert [getattr(settings, n) for n in RUNNING] == [5, 8, 256, "DEBUG"]


@pytest.mark.parametrize(
    "line, says",
    [
        ("threads = 0", "threads: Input should be greater than or equal to 1"),
        ("num_parallel = 'four'", "num_parallel: Input should be a valid integer"),
        ("prefill_chunk = -1", "prefill_chunk: Input should be greater than or equal to 1"),
        ("log_level = 'chatty'", "log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("device = 'tpu'", "device: Value error, unknown device 'tpu'; devices: auto, cpu, cuda, dml, coreml"),
    ],
)
def test_a_bad_value_in_server_toml_is_refused_naming_the_file(tmp_path, line, says):
    (tmp_path / "server.toml").write_text(f"[server]\n{line}\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        ServerSettings.load(configs_dir=tmp_path)
    assert says in str(info.value) and f"({tmp_path / 'server.toml'})" in str(info.value)


def test_the_cli_reads_no_ortserve_variable_itself():
    """Every ORTSERVE_* is read by the loader (and the home defaults); the CLI asks the settings."""
    import inspect

    from ortserve.server import cli, cli_serve

    assert "os.environ" not in inspect.getsource(cli) + inspect.getsource(cli_serve)


def test_the_running_settings_reach_the_model_loaders():
    from ortserve.server.engine import load_generator
    from ortserve.server.engine.ort_embedder import load_embedder
    from ortserve.server.loading import default_loader

    settings = ServerSettings(threads=3, num_parallel=2, prefill_chunk=64)
    chat, embedding = default_loader("chat", settings), default_loader("embedding", settings)
    assert chat.func is load_generator
    assert chat.keywords == {
        "threads": 3,
        "parallel": 2,
        "prefill_chunk": 64,
        "memory_limit": None,
        "prompt_cache_bytes": None,  # load_generator's default_cache_bytes
        "batched": True,
    }
    assert embedding.func is load_embedder and embedding.keywords == {"threads": 3}
