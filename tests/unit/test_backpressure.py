"""A flood is refused at once, not queued for minutes (issue #13, item 5): past `num_parallel + max_queue`
requests in flight on a chat model, a 503 server_busy with Retry-After; the server answers on meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from ortserve.core.store import ModelStore
from tests.unit.fake_app import CHAT, add_model, assert_error, chat_body


async def hold(client, backend, n: int) -> list[asyncio.Future]:
    """`n` chats in flight, held by the fake engine until `backend.gate` is set."""
    backend.gate = asyncio.Event()
    backend.options = {"gate": backend.gate}
    held = [asyncio.ensure_future(client.post(CHAT, json=chat_body(model="tiny"))) for _ in range(n)]
    while not backend.generators or len(backend.generators[0].requests) < n:
        await asyncio.sleep(0.01)
    return held


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.models_dir)
    add_model(store, "tiny")
    return store


@pytest.mark.parametrize("settings", [{"num_parallel": 1, "max_queue": 2}], indirect=True)
async def test_past_the_queue_a_503_with_retry_after(client, backend):
    held = await hold(client, backend, 3)
    refused = await client.post(CHAT, json=chat_body(model="tiny"))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
    assert_error(await refused.get_json(), type="server_error", code="server_busy")
    assert (await client.get("/health")).status_code == 200  # the server answers on
    backend.gate.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
    assert (await client.post(CHAT, json=chat_body(model="tiny"))).status_code == 200  # room again


@pytest.mark.parametrize("settings", [{"max_requests": 2}], indirect=True)
async def test_past_max_requests_in_flight_a_503_before_any_route(client, backend):
    held = await hold(client, backend, 2)
    refused = await client.get("/health")  # any route: the bound is below the app
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
    assert_error(await refused.get_json(), type="server_error", code="server_busy")
    backend.gate.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("settings", [{"max_requests": 1}], indirect=True)
async def test_the_server_wide_bound_answers_in_the_routes_error_shape(client, backend):
    held = await hold(client, backend, 1)
    refused = await client.get("/api/tags")  # Ollama's route: Ollama's {"error": "..."}
    assert refused.status_code == 503 and "max_requests" in (await refused.get_json())["error"]
    backend.gate.set()
    await asyncio.gather(*held)
