"""Ollama-style model management on a real server: `ortserve create` from a Modelfile, per-model defaults
and SYSTEM, keep-alive (request, settings, 0, forever), the LRU limit, `ortserve ps` / GET /api/ps, and
store changes (create, cp, rm) seen by the running server, including `rm` during a stream; names that
share weights (`cp`) share one runner process.

The `ortserve` commands run as subprocesses beside the server, as a user runs them. Loading and unloading
is observed through GET /api/ps, polled with deadlines (never a fixed sleep taken as a result).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from ortserve.core.model_config import ModelConfig
from ortserve.core.store import MANIFEST, ModelStore
from tests.e2e.conftest import CHAT_MODEL, run_ortserve, start_server, stop_server_cleanly

pytestmark = pytest.mark.slow

KEY = "e2e-management-key"
EMBEDDER = "all-minilm"
BASE = "acc-model"  # a `cp` of CHAT_MODEL; the server serves chat models with num_ctx 128 by default
OTHER = "tiny-qwen"  # weights of its own
NUM_CTX = 128
USER = [{"role": "user", "content": "Who are you?"}]
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)  # ~400 tokens: > 128, < 2048


def _home(tmp_path_factory, source, name: str):
    home = tmp_path_factory.mktemp(name) / "home"
    shutil.copytree(source, home)
    ModelStore(home / "models").copy(CHAT_MODEL, BASE)
    return home


@pytest.fixture(scope="module")
def managed(tmp_path_factory, store_home):
    """A server with an API key and num_ctx 128 (the default limits: 3 models, keep_alive 5m)."""
    home = _home(tmp_path_factory, store_home, "e2e-managed")
    server = start_server(home, home.parent / "server.log", "--api-key", KEY, env={"ORTSERVE_NUM_CTX": str(NUM_CTX)})
    yield server
    stop_server_cleanly(server)


@pytest.fixture(scope="module")
def one_model(tmp_path_factory, chat_store_home):
    """A server that keeps at most one model loaded."""
    home = _home(tmp_path_factory, chat_store_home, "e2e-one-model")
    server = start_server(home, home.parent / "server.log", env={"ORTSERVE_MAX_LOADED_MODELS": "1"})
    yield server
    stop_server_cleanly(server)


@pytest.fixture
def client(managed):
    with managed.client(api_key=KEY, max_retries=0, timeout=120) as client:
        yield client


def ps(server, key: str | None = KEY) -> dict[str, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{server.base_url}/api/ps", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return {m["name"]: m for m in response.json()["models"]}


def wait_until(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {timeout} s")
        time.sleep(0.05)


def runner_pids(server) -> set[int]:
    """The server's runner processes (one per loaded chat model), found through /proc."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == server.process.pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                pids.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def create(server, tmp_path, name: str, modelfile: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.Modelfile"
    path.write_text(modelfile, encoding="utf-8")
    return run_ortserve(server.home, "create", name, "-f", str(path))


def chat(client, model: str, messages=USER, **fields):
    return client.chat.completions.create(model=model, messages=messages, **fields)


# ---- create -----------------------------------------------------------------
def test_create_gives_a_new_name_a_larger_context(managed, client, tmp_path):
    folders = sorted(p.name for p in (managed.home / "models").iterdir() if p.is_dir())
    done = create(managed, tmp_path, "acc-model-8k", "FROM acc-model\nPARAMETER num_ctx 8192\n")
    assert done.returncode == 0, done.stderr
    assert "created 'acc-model-8k' from 'acc-model'" in done.stdout
    entry = managed.store.get("acc-model-8k")
    assert entry.config.weights == CHAT_MODEL and entry.config.num_ctx == 8192
    assert sorted(p.name for p in (managed.home / "models").iterdir() if p.is_dir()) == folders  # no weights copy
    assert (managed.home / "models" / "acc-model-8k.toml").is_file()  # its settings, beside the weights

    accepted = client.completions.create(model="acc-model-8k", prompt=LONG, max_tokens=1)
    assert accepted.usage.prompt_tokens > NUM_CTX
    accepted = chat(client, "acc-model-8k", [{"role": "user", "content": LONG}], max_tokens=1)
    assert accepted.usage.prompt_tokens > NUM_CTX
    with pytest.raises(openai.BadRequestError) as refused:
        chat(client, BASE, [{"role": "user", "content": LONG}], max_tokens=1)
    assert refused.value.body["code"] == "context_length_exceeded" and str(NUM_CTX) in refused.value.message


def test_a_bad_modelfile_creates_nothing(managed, client, tmp_path):
    bad = "FROM acc-model\nTEMPLATE {{ .Prompt }}\nPARAMETER mirostat 2\nPARAMETER temperature warm\n"
    done = create(managed, tmp_path, "bad-model", bad)
    assert done.returncode == 1
    for line in (
        "line 2: TEMPLATE is not supported",
        "line 3: PARAMETER mirostat is not supported",
        "line 4: PARAMETER temperature: expected a number",
    ):
        assert line in done.stderr
    done = create(managed, tmp_path, "bad-model", "# no such base\nFROM no-such-model\n")
    assert done.returncode == 1 and "line 2: FROM no-such-model: not a model in the store" in done.stderr
    assert "bad-model" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        chat(client, "bad-model", max_tokens=1)
    warned = create(managed, tmp_path, "warned", "FROM acc-model\nPARAMETER num_thread 8\nLICENSE MIT\n")
    assert warned.returncode == 0 and "line 2: PARAMETER num_thread is ignored" in warned.stderr
    assert "line 3: LICENSE is ignored" in warned.stderr


def test_create_from_a_folder_converts_it(managed, client, tmp_path, checkpoints):
    source = os.path.relpath(checkpoints["llama"], tmp_path)  # relative to the Modelfile, as in Ollama
    modelfile = f'FROM "{source}"\nPARAMETER num_predict 2\nSYSTEM Be kind.\n'
    path = tmp_path / "folder.Modelfile"
    path.write_text(modelfile, encoding="utf-8")
    done = run_ortserve(managed.home, "create", "from-folder", "-f", str(path), "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    entry = managed.store.get("from-folder")
    assert entry.folder.name == "from-folder" and entry.manifest["precision"] == "fp32"
    assert entry.config.system == "Be kind." and entry.config.defaults.max_tokens == 2
    reply = chat(client, "from-folder", extra_body={"min_tokens": 2})
    assert reply.model == "from-folder" and reply.usage.completion_tokens == 2


def test_defaults_and_system_apply_when_the_request_leaves_them_out(managed, client, tmp_path):
    modelfile = (
        'FROM acc-model\nPARAMETER temperature 0\nPARAMETER num_predict 3\nSYSTEM """\nYou are Mario.\n'
        'Answer as Mario.\n"""\n'
    )
    done = create(managed, tmp_path, "mario", modelfile)
    assert done.returncode == 0, done.stderr
    system = [{"role": "system", "content": "You are Mario.\nAnswer as Mario."}]
    three = {"extra_body": {"min_tokens": 3}}

    mine = chat(client, "mario", **three)  # greedy, 3 tokens, the model's system prompt
    base = chat(client, BASE, system + USER, temperature=0, max_tokens=3, **three)
    assert mine.usage.completion_tokens == 3 and mine.choices[0].finish_reason == "length"
    assert mine.usage.prompt_tokens == base.usage.prompt_tokens
    assert mine.choices[0].message.content == base.choices[0].message.content
    assert chat(client, BASE, temperature=0, max_tokens=3).usage.prompt_tokens < mine.usage.prompt_tokens

    # the request's own values win: its system message, its max_tokens
    own = [{"role": "system", "content": "Be brief."}, *USER]
    assert (
        chat(client, "mario", own, **three).usage.prompt_tokens
        == chat(client, BASE, own, max_tokens=1).usage.prompt_tokens
    )
    assert chat(client, "mario", max_tokens=6, extra_body={"min_tokens": 6}).usage.completion_tokens == 6

    stream = chat(client, "mario", stream=True, stream_options={"include_usage": True}, **three)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mine.choices[0].message.content and chunks[-1].usage.completion_tokens == 3

    # completions: the model's num_predict wins over OpenAI's default of 16; no system prompt there
    completion = client.completions.create(model="mario", prompt="Once upon a time", **three)
    reference = client.completions.create(model=BASE, prompt="Once upon a time", temperature=0, max_tokens=3, **three)
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens == reference.usage.prompt_tokens
    assert completion.choices[0].text == reference.choices[0].text


# ---- keep-alive ---------------------------------------------------------------
def test_keep_alive_from_the_request(managed, client):
    chat(client, BASE, max_tokens=1, extra_body={"keep_alive": -1})
    assert ps(managed)[BASE]["expires_in"] is None  # forever
    chat(client, BASE, max_tokens=1, extra_body={"keep_alive": "8s"})  # long enough for a slow machine's ps
    listed = ps(managed)
    assert BASE in listed and 0 <= listed[BASE]["expires_in"] <= 8
    wait_until(lambda: BASE not in ps(managed), "unloaded")
    chat(client, BASE, max_tokens=1)  # loaded again, for the server's 5 minutes
    assert 250 < ps(managed)[BASE]["expires_in"] <= 300
    chat(client, BASE, max_tokens=1, extra_body={"keep_alive": 0})
    wait_until(lambda: BASE not in ps(managed), "unloaded at once", timeout=10)
    with pytest.raises(openai.BadRequestError) as bad:
        chat(client, BASE, max_tokens=1, extra_body={"keep_alive": "a while"})
    assert bad.value.body["param"] == "keep_alive"


def test_keep_alive_of_an_embedding_model(managed, client):
    client.embeddings.create(model=EMBEDDER, input="hello", extra_body={"keep_alive": "1h"})
    assert ps(managed)[EMBEDDER]["task"] == "embedding" and ps(managed)[EMBEDDER]["expires_in"] > 3500
    client.embeddings.create(model=EMBEDDER, input="hello", extra_body={"keep_alive": 0})
    wait_until(lambda: EMBEDDER not in ps(managed), "unloaded at once", timeout=10)


def test_keep_alive_from_the_model_settings(managed, client):
    store = managed.store
    store.copy(BASE, "brief-stay")
    store.write_config("brief-stay", store.get("brief-stay").config.model_copy(update={"keep_alive": "8s"}))
    chat(client, "brief-stay", max_tokens=1)
    assert 0 <= ps(managed)["brief-stay"]["expires_in"] <= 8
    wait_until(lambda: "brief-stay" not in ps(managed), "unloaded")
    chat(client, "brief-stay", max_tokens=1, extra_body={"keep_alive": "1h"})  # the request's wins
    assert ps(managed)["brief-stay"]["expires_in"] > 3500
    store.remove("brief-stay")


# ---- ps -------------------------------------------------------------------------
def test_ps_route_and_command(managed, client, monkeypatch):
    chat(client, BASE, max_tokens=1)
    model = ps(managed)[BASE]
    assert model["model"] == BASE and model["device"] == "cpu" and model["task"] == "chat"
    assert model["size"] > 0 and model["size_vram"] == 0 and model["details"]["format"] == "onnx"
    assert model["context_length"] == NUM_CTX and model["expires_at"].endswith("+00:00")

    unauthorized = httpx.get(f"{managed.base_url}/api/ps", timeout=30)
    # /api/* answers in Ollama's error shape: {"error": "..."}
    assert unauthorized.status_code == 401 and "API key" in unauthorized.json()["error"]

    for proxy in ("HTTP_PROXY", "http_proxy"):  # a proxy that answers nothing: never used for a local server
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    shown = run_ortserve(managed.home, "ps", "--url", managed.base_url, "--api-key", KEY)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["NAME", "TASK", "SIZE", "GPU", "DEVICE", "UNTIL"]
    row = next(r for r in rows if r.split()[0] == BASE)
    assert " chat " in row and " - " in row and " cpu " in row and row.endswith("from now")  # nothing on a GPU
    as_json = run_ortserve(managed.home, "ps", "--url", managed.base_url, "--api-key", KEY, "--json")
    assert BASE in [m["name"] for m in json.loads(as_json.stdout)]
    refused = run_ortserve(managed.home, "ps", "--url", managed.base_url)
    assert refused.returncode == 1 and "401" in refused.stderr


def test_ps_and_info_find_the_server_their_settings_start(managed, tmp_path):
    """Without --url, `ps` and `info` ask the host, port and API key that `serve` would use with the same settings."""
    port = managed.base_url.rsplit(":", 1)[1]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "server.toml").write_text(
        f'[server]\nhost = "0.0.0.0"\nport = {port}\napi_key = "{KEY}"\n', encoding="utf-8"
    )
    chat(managed.client(api_key=KEY), BASE, max_tokens=1)
    shown = run_ortserve(tmp_path, "ps", "--json")  # an all-interfaces host is asked on 127.0.0.1
    assert shown.returncode == 0, shown.stderr
    assert BASE in [m["name"] for m in json.loads(shown.stdout)]
    info = run_ortserve(tmp_path, "info", "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["server"]["devices"][BASE] == "cpu"


def test_ps_lists_what_loads_on_first_requests(managed):
    managed.store.copy(BASE, "crowd")

    async def burst():
        async with managed.async_client(api_key=KEY, max_retries=0, timeout=120) as client:
            return await asyncio.gather(
                *(client.chat.completions.create(model="crowd", messages=USER, max_tokens=2) for _ in range(4))
            )

    responses = asyncio.run(burst())  # every request waits for the one load; none fails
    assert [r.model for r in responses] == ["crowd"] * 4
    assert ps(managed)["crowd"]["requests"] == 0
    managed.store.remove("crowd")


# ---- the store changes under a running server ---------------------------------------
def test_rm_during_a_stream_lets_it_finish(managed, client):
    models = managed.home / "models"
    shutil.copytree(models / CHAT_MODEL, models / "doomed")  # a model with weights of its own
    managed.store.write_config("doomed", ModelConfig(num_ctx=2048))
    tokens, n = 1900, 8  # the runner decodes 4 at a time: seconds in flight, time for `rm` and `ps` on a busy machine
    stream = chat(
        client,
        "doomed",
        max_tokens=tokens,
        n=n,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"min_tokens": tokens, "keep_alive": -1},
    )
    chunks = iter(stream)
    first = next(chunks)
    removed = run_ortserve(managed.home, "rm", "doomed")
    assert removed.returncode == 0, removed.stderr
    assert not (models / "doomed" / MANIFEST).exists()  # deleted (on Windows, whose open files stay: hidden)
    assert ps(managed)["doomed"]["requests"] == 1  # removed while its request is in flight
    rest = [first, *chunks]
    finished = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
    assert finished == ["length"] * n
    assert rest[-1].usage.completion_tokens == n * tokens  # every token, none lost to the removal
    # then it is unloaded, though its keep_alive is forever and no request names it again
    wait_until(lambda: "doomed" not in ps(managed), "unloaded after its removal")
    with pytest.raises(openai.NotFoundError):
        chat(client, "doomed", max_tokens=1)


def test_cp_and_rm_while_running(managed, client):
    copied = run_ortserve(managed.home, "cp", BASE, "renamed")
    assert copied.returncode == 0, copied.stderr
    assert chat(client, "renamed", max_tokens=1).model == "renamed"
    assert "renamed" in [m.id for m in client.models.list().data]
    assert run_ortserve(managed.home, "rm", "renamed").returncode == 0
    assert "renamed" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        chat(client, "renamed", max_tokens=1)
    assert chat(client, BASE, max_tokens=1).model == BASE  # the weights it shared stay


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the runner processes through /proc")
def test_copies_share_one_runner_and_keep_their_own_system(managed, client):
    copies = ("shared-copy", "shared-mario")
    for name in copies:
        done = run_ortserve(managed.home, "cp", BASE, name)
        assert done.returncode == 0, done.stderr
    system = "Answer in one word."
    store = managed.store
    store.write_config(copies[1], store.get(copies[1]).config.model_copy(update={"system": system}))
    greedy = {"temperature": 0, "max_tokens": 4, "extra_body": {"min_tokens": 4}}
    try:
        replies = {name: chat(client, name, **greedy) for name in (BASE, *copies)}
        rows = [m for m in ps(managed).values() if set(m["names"]) & {BASE, *copies}]
        assert len(rows) == 1 and {BASE, *copies} <= set(rows[0]["names"])  # one loaded model for the three
        assert rows[0]["name"] == copies[1]  # listed under the name last used
        # one runner process per row, not per name (polled: a runner unloaded by an earlier test may be exiting)
        wait_until(
            lambda: len(runner_pids(managed)) == len([m for m in ps(managed).values() if m["task"] == "chat"]),
            "one runner per loaded chat model",
        )

        # the copy's SYSTEM applies per request on the shared runner; the other names' requests have none
        plain, mario = replies[BASE], replies[copies[1]]
        assert replies[copies[0]].choices[0].message.content == plain.choices[0].message.content
        assert mario.usage.prompt_tokens > plain.usage.prompt_tokens
        assert mario.choices[0].message.content != plain.choices[0].message.content
        explicit = chat(client, BASE, [{"role": "system", "content": system}, *USER], **greedy)
        assert mario.choices[0].message.content == explicit.choices[0].message.content

        # `rm` of one name leaves the runner the others use
        pids = runner_pids(managed)
        assert run_ortserve(managed.home, "rm", copies[0]).returncode == 0
        assert chat(client, BASE, max_tokens=1).model == BASE
        assert runner_pids(managed) == pids
    finally:
        for name in copies:
            if store.exists(name):
                store.remove(name)


# ---- limits ---------------------------------------------------------------------
def test_least_recently_used_is_unloaded_with_a_limit_of_one(one_model):
    with one_model.client(max_retries=0, timeout=120) as client:
        for name in (CHAT_MODEL, OTHER, CHAT_MODEL):
            assert chat(client, name, max_tokens=1).model == name
            assert list(ps(one_model, key=None)) == [name]
        # a copy of the loaded model shares it: it counts once, so the limit of one pushes nothing out
        assert chat(client, BASE, max_tokens=1).model == BASE
        assert [m["names"] for m in ps(one_model, key=None).values()] == [[BASE, CHAT_MODEL]]

        # a model with a request in flight is never unloaded: the next one loads beside it, over the limit,
        # and the limit holds again once the first is idle
        stream = chat(client, CHAT_MODEL, max_tokens=1900, n=4, stream=True, extra_body={"min_tokens": 1900})
        chunks = iter(stream)
        next(chunks)
        assert chat(client, OTHER, max_tokens=1).model == OTHER
        finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finished == ["length"] * 4
        wait_until(lambda: len(ps(one_model, key=None)) == 1, "back to one loaded model")
    assert "over the limits" in one_model.log.read_text()  # the busy model was kept, and that was logged
