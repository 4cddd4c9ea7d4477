"""Fixtures of the unit tests: the image server of tests/unit/image_site.py, the real app over the fake
engine of tests/unit/fake_app.py (each test module gives its own `store`), and a settable clock."""

from __future__ import annotations

import time

import pytest

from ortserve.server.app import create_app
from ortserve.server.settings import ServerSettings
from tests.unit.fake_app import FakeBackend
from tests.unit.image_site import serve
from tests.unit.registry_fakes import Clock


@pytest.fixture(scope="module")
def images_server():
    server, thread = serve()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def site(images_server):
    """(base URL, the requests it saw: (path, Host header))."""
    images_server.seen.clear()
    return f"http://127.0.0.1:{images_server.server_address[1]}", images_server.seen


@pytest.fixture
def settings(tmp_path, request) -> ServerSettings:
    """Small bodies by default; a test may override fields with indirect parametrization."""
    fields = {"max_request_bytes": 4096, **getattr(request, "param", {})}
    return ServerSettings(models_dir=tmp_path / "models", configs_dir=tmp_path / "configs", **fields)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def client(settings, store, backend):
    app = create_app(settings, store, loader=backend.load)
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """`time.monotonic` (the registry's clock) stands still at `clock.now` until a test moves it."""
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    return clock
