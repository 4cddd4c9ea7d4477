"""A Prometheus scrape of the real server after real requests (issue #18): request counts, tokens and the
loaded runner's resident memory; and the id a client sends comes back."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import CHAT_MODEL

HI = [{"role": "user", "content": "hi"}]


def test_a_scrape_after_a_chat(client, http):
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=3)
    raw = http.post(
        "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": HI, "max_tokens": 2},
        headers={"x-request-id": "e2e-42"},
    )
    assert raw.headers["x-request-id"] == "e2e-42"
    text = http.get("/metrics").text
    seen = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    route = "/v1/chat/completions"
    assert seen[("ortserve_requests_total", (("method", "POST"), ("route", route), ("status", "200")))] >= 2
    completion = seen[("ortserve_tokens_total", (("kind", "completion"), ("model", CHAT_MODEL)))]
    assert completion >= reply.usage.completion_tokens
    memory = [v for (name, labels), v in seen.items() if name == "ortserve_model_resident_bytes"]
    assert memory and max(memory) > 20e6  # a runner process's resident set, read by psutil
