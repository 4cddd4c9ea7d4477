"""Host and Origin rules (issue #13, item 2): DNS-rebinding pages and other web sites cannot use the server.

Through the app with `app.test_app()`; the same requests against a real server with curl are in
tests/e2e/test_bad_input_e2e.py.
"""

from __future__ import annotations

import pytest

from ortserve.core.store import ModelStore
from ortserve.server.host_rules import host_allowed, machine_names, origin_allowed, split_host
from tests.unit.fake_app import CHAT, add_model, assert_error

BODY = b'{"model":"tiny-demo","messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.models_dir)
    add_model(store, "tiny-demo")
    return store


async def test_a_cross_site_text_plain_post_is_refused_before_anything_runs(client, backend):
    # what any web page can send without a preflight (the curl command)
    headers = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    response = await client.post(CHAT, data=BODY, headers=headers)
    assert response.status_code == 403
    body = await response.get_json()
    assert_error(body, type="invalid_request_error", code="forbidden")
    assert "https://evil.example" in body["error"]["message"] and "allowed_origins" in body["error"]["message"]
    assert backend.loads == []  # no model was loaded, nothing generated
    assert (await client.post(CHAT, data=BODY, headers={"Content-Type": "text/plain"})).status_code == 200


async def test_a_rebinding_host_is_refused(client, backend):
    response = await client.post(CHAT, data=BODY, headers={"Host": "evil.example:8000"})
    assert response.status_code == 403
    assert "allowed_hosts" in (await response.get_json())["error"]["message"]
    assert (await client.get("/health", headers={"Host": "evil.example:8000"})).status_code == 403
    assert backend.loads == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "192.168.1.20:8000", "app.localhost", "LOCALHOST.", "127.0.0.1"],
)
async def test_this_machines_names_and_addresses_are_served(client, host):
    assert (await client.post(CHAT, data=BODY, headers={"Host": host})).status_code == 200


@pytest.mark.parametrize(
    "settings", [{"allowed_hosts": [".example.lan"], "allowed_origins": ["https://*.example.com"]}], indirect=True
)
async def test_allow_lists_open_named_hosts_and_origins(client):
    assert (await client.post(CHAT, data=BODY, headers={"Host": "box.example.lan:8000"})).status_code == 200
    assert (await client.post(CHAT, data=BODY, headers={"Host": "example.lan.evil:8000"})).status_code == 403
    page = {"Origin": "https://chat.example.com"}
    response = await client.post(CHAT, data=BODY, headers=page)
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == page["Origin"]
    assert (await client.post(CHAT, data=BODY, headers={"Origin": "https://example.com.evil"})).status_code == 403


def test_host_rules():
    assert split_host("[::1]:8000") == "::1" and split_host("a:notaport") is None
    assert host_allowed(None, "127.0.0.1", []) and host_allowed("", "127.0.0.1", [])
    assert host_allowed(f"{next(iter(machine_names()))}:8000", "127.0.0.1", [])
    assert host_allowed("myserver:8000", "myserver", [])  # the name it was bound to
    assert not host_allowed("evil.example", "127.0.0.1", [])
    assert not host_allowed("localhost.evil.example", "127.0.0.1", [])
    assert host_allowed("anything.example", "127.0.0.1", ["*"])


def test_origin_rules():
    assert origin_allowed(None, [])  # curl and the SDKs send none
    for local in (
        "http://localhost:3000",
        "http://127.0.0.1",
        "https://[::1]:8443",
        "http://127.0.0.2:5173",
        "http://ui.localhost",
        "app://obsidian.md",
        "file://",
        "vscode-webview://x",
    ):
        assert origin_allowed(local, []), local
    for foreign in ("https://evil.example", "null", "http://localhost.evil.example", "http://[::1", "http://10.0.0.5"):
        assert not origin_allowed(foreign, []), foreign
    assert origin_allowed("https://evil.example", ["*"])
