"""Fixtures of the unit tests: the image server of tests/unit/image_site.py."""
from __future__ import annotations

import pytest

from tests.unit.image_site import serve


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
