"""GET /metrics, the access log and request ids (issue #18) through the app (the fake engine of fake_app.py):
what a scrape shows after real requests, one log line per request without its text, ids kept or made."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ortserve.core.store import ModelStore
from ortserve.server.app import create_app
from tests.unit.fake_app import CHAT, add_model, chat_body

SECRET = "a prompt nobody should find in a log"


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.models_dir)
    add_model(store, "tiny")
    return store


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_scrape_counts_requests_tokens_and_loaded_models(client):
    body = chat_body(model="tiny", messages=[{"role": "user", "content": SECRET}])
    assert (await client.post(CHAT, json=body)).status_code == 200
    assert (await client.post(CHAT, json={**body, "stream": True})).status_code == 200
    assert (await client.post(CHAT, json={"model": "none", "messages": []})).status_code in (400, 404)
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    seen = samples(await response.get_data(as_text=True))
    ok = ("ortserve_requests_total", (("method", "POST"), ("route", CHAT), ("status", "200")))
    assert seen[ok] == 2
    assert seen[("ortserve_tokens_total", (("kind", "completion"), ("model", "tiny")))] == 6  # "Hel", "lo", "!" twice
    assert seen[("ortserve_time_to_first_token_seconds_count", (("model", "tiny"),))] == 2
    assert seen[("ortserve_request_duration_seconds_count", (("route", CHAT),))] >= 3
    assert seen[("ortserve_loaded_models", ())] == 1
    assert seen[("ortserve_requests_in_flight", (("model", "tiny"),))] == 0
    assert seen[("ortserve_model_gpu_bytes", (("model", "tiny"),))] == 0  # on the CPU
    assert ("ortserve_runner_restarts_total", (("model", "tiny"),)) in seen


async def test_one_access_line_per_request_with_its_id_and_never_the_prompt(client, caplog):
    body = chat_body(model="tiny", messages=[{"role": "user", "content": SECRET}])
    with caplog.at_level(logging.INFO, logger="ortserve.access"):
        mine = await client.post(CHAT, json=body, headers={"x-request-id": "client-7"})
        made = await client.post(CHAT, json=body)
    assert mine.headers["x-request-id"] == "client-7" and made.headers["x-request-id"].startswith("req-")
    lines = [r.getMessage() for r in caplog.records if r.name == "ortserve.access"]
    assert len(lines) == 2 and all(SECRET not in line for line in lines)
    assert lines[0].startswith(f"POST {CHAT} 200 model=tiny prompt_tokens=") and lines[0].endswith("id=client-7")
    assert "completion_tokens=3" in lines[0] and "ttft=" in lines[0]
    bad = await client.post(CHAT, json=body, headers={"x-request-id": "id with spaces=1 status=500"})
    assert bad.headers["x-request-id"].startswith("req-")  # an id that could forge log fields is replaced


@pytest.mark.parametrize("settings", [{"log_format": "json"}], indirect=True)
async def test_the_access_log_as_json(client, caplog):
    with caplog.at_level(logging.INFO, logger="ortserve.access"):
        await client.post(CHAT, json=chat_body(model="tiny"))
    (entry,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ortserve.access"]
    assert entry["status"] == 200 and entry["model"] == "tiny" and entry["completion_tokens"] == 3
    assert entry["id"].startswith("req-") and entry["total_s"] >= entry["ttft_s"] >= 0


@pytest.mark.parametrize("open_", [False, True])
async def test_metrics_are_behind_the_api_key_unless_opened(settings, store, backend, open_):
    app = create_app(settings.model_copy(update={"api_key": "k", "metrics_open": open_}), store, loader=backend.load)
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/metrics")
    assert response.status_code == (200 if open_ else 401)
