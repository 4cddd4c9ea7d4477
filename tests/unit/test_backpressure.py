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


@pytest.mark.parametrize("settings", [{"num_parallel": 1, "max_queue": 2}], indirect=True)
async def test_a_full_model_refuses_before_the_body_is_validated(client, backend):
    # a flood is refused below Quart (server/busy_gate.py): only the body's "model" is read, so a body the
    # route would answer with a 400 gets the 503 while the queue is full, and its 400 once there is room
    held = await hold(client, backend, 3)
    unparsed = chat_body(model="tiny", messages="not a list", max_tokens=-1)
    refused = await client.post(CHAT, json=unparsed)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
    assert_error(await refused.get_json(), type="server_error", code="server_busy")
    ollama = await client.post("/api/chat", json={"model": "tiny", "messages": 5})  # Ollama's route, Ollama's shape
    assert ollama.status_code == 503 and "max_queue" in (await ollama.get_json())["error"]
    backend.gate.set()
    await asyncio.gather(*held)
    assert (await client.post(CHAT, json=unparsed)).status_code == 400


@pytest.mark.parametrize("settings", [{"num_parallel": 1, "max_queue": 2, "api_key": "k"}], indirect=True)
async def test_a_full_model_does_not_answer_for_the_checks(client, backend):
    """The early 503 is only for requests the app would have queued: no key, a foreign page, another task's
    model or a body that names no model get the app's own answer."""
    key = {"Authorization": "Bearer k"}
    backend.gate = asyncio.Event()
    backend.options = {"gate": backend.gate}
    held = [asyncio.ensure_future(client.post(CHAT, json=chat_body(model="tiny"), headers=key)) for _ in range(3)]
    while not backend.generators or len(backend.generators[0].requests) < 3:
        await asyncio.sleep(0.01)
    assert (await client.post(CHAT, json=chat_body(model="tiny"))).status_code == 401
    foreign = {**key, "Origin": "https://evil.example"}
    assert (await client.post(CHAT, json=chat_body(model="tiny"), headers=foreign)).status_code == 403
    wrong_task = await client.post("/v1/embeddings", json={"model": "tiny", "input": "hi"}, headers=key)
    assert wrong_task.status_code == 400 and (await wrong_task.get_json())["error"]["param"] == "model"
    assert (await client.post(CHAT, data=b"[1, 2]", headers=key)).status_code == 400
    page = {**key, "Origin": "http://localhost:3000"}  # an allowed page may read the 503, as any answer
    refused = await client.post(CHAT, json=chat_body(model="tiny"), headers=page)
    assert refused.status_code == 503 and refused.headers["Access-Control-Allow-Origin"] == page["Origin"]
    backend.gate.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
