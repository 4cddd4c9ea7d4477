"""Unusual values on the real server, where the real engine runs them: valid requests at the edge of their
ranges are answered (not a 500), every body is JSON, a browser page on this machine passes CORS, and a page
on another site (or a DNS-rebinding one) is refused.

The session server logs no traceback for any of this (checked when it stops).
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time

import pytest

from tests.e2e.conftest import BODY_TIMEOUT, CHAT_MODEL

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def still_serving(client):
    yield
    response = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=2)
    assert response.choices[0].finish_reason in ("stop", "length")


def strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity are not numbers (JavaScript's JSON.parse refuses them)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a response: {text[:300]}"))


@pytest.mark.parametrize("top_k", [10**6, 2**40])  # over the vocabulary; over int32
def test_top_k_past_the_vocabulary_is_no_cut(client, top_k):
    # onnxruntime-genai refuses both; it was a 500 backend_error
    chat = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=3, extra_body={"top_k": top_k})
    assert chat.choices[0].finish_reason in ("stop", "length")
    completion = client.completions.create(model=CHAT_MODEL, prompt="hi", max_tokens=3, extra_body={"top_k": top_k})
    assert completion.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_a_near_zero_temperature_gives_greedy_logprobs_in_valid_json(http, stream):
    # logits / 1e-300 in float32 were inf: every logprob was NaN, written as a bare NaN
    body = {
        "model": CHAT_MODEL,
        "messages": HI,
        "max_tokens": 3,
        "temperature": 1e-300,
        "logprobs": True,
        "top_logprobs": 2,
        "stream": stream,
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    if stream:
        events = [e[len("data: ") :] for e in response.text.split("\n\n") if e and e != "data: [DONE]"]
        choices = [c for e in events for c in strict_json(e)["choices"] if c["logprobs"]]
        content = [t for c in choices for t in c["logprobs"]["content"] or ()]
    else:
        content = strict_json(response.text)["choices"][0]["logprobs"]["content"]
    assert content and all(math.isfinite(t["logprob"]) and t["logprob"] <= 0 for t in content)
    greedy = http.post("/v1/chat/completions", json={**body, "temperature": 0, "stream": False}).json()
    assert [t["logprob"] for t in content] == [t["logprob"] for t in greedy["choices"][0]["logprobs"]["content"]]


def test_a_browser_page_on_this_machine_passes_cors(http):
    origin = "http://localhost:5173"
    preflight = http.options(
        "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-stainless-lang",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization,content-type,x-stainless-lang"
    body = {"model": CHAT_MODEL, "messages": HI, "max_tokens": 2, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body, headers={"Origin": origin}) as response:
        assert response.headers["access-control-allow-origin"] == origin
        assert response.read().decode().endswith("data: [DONE]\n\n")
    elsewhere = http.options(
        "/v1/chat/completions", headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}
    )
    assert elsewhere.status_code == 403 and "access-control-allow-origin" not in elsewhere.headers


def curl(server, *args: str) -> tuple[int, dict]:
    """curl as the issue ran it: (status, JSON body)."""
    assert shutil.which("curl"), "curl is needed for this test"
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


# the commands of issue #13, item 2: what any web page (or a DNS-rebinding one) could send
CROSS_SITE = [
    "-H",
    "Origin: https://evil.example",
    "-H",
    "Content-Type: text/plain",
    "-d",
    json.dumps({"model": CHAT_MODEL, "messages": HI}),
]


def test_a_cross_site_page_cannot_drive_the_models(server):
    status, body = curl(server, *CROSS_SITE, f"{server.base_url}/v1/chat/completions")
    assert status == 403 and body["error"]["code"] == "forbidden"


def test_a_rebinding_host_cannot_read_answers(server):
    port = server.base_url.rsplit(":", 1)[1]
    status, body = curl(server, "-H", f"Host: evil.example:{port}", f"{server.base_url}/v1/models")
    assert status == 403 and "allowed_hosts" in body["error"]["message"]
    status, body = curl(server, f"{server.base_url}/v1/models")  # the same without the foreign Host
    assert status == 200 and body["data"]


def test_a_stalled_body_gets_a_408_and_frees_the_connection(server):
    # a body shorter than its Content-Length: the connection held for 40 s with no answer
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model":'
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < BODY_TIMEOUT + 10
