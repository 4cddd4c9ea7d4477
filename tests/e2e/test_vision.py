"""Images in chat on real servers, driven by the official openai client.

Image URLs are served by a small HTTP server on 127.0.0.1 in this process. Three servers:
- `open_server` allows 127.0.0.1 (ORTSERVE_IMAGE_FETCH_ALLOW) with a 3 s fetch timeout and a
  16 KiB image limit; its store has the tiny text models plus `tiny-llama-sees`, tiny-llama's
  weights under a manifest that lists the image modality, so every refusal of a bad image is
  checked end to end without a vision model (those are refused before any generation);
- `guarded_server`, the same store with default settings: loopback image URLs are refused;
- `vision_server`, the tiny vision model (`vision_store_home`, `tiny-vlm`), for images that
  reach a model.
"""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest
from PIL import Image

from tests.e2e.conftest import CHAT_MODEL, start_server, stop_server_cleanly
from tests.vision_reference import hf_greedy

SIGHTED = "tiny-llama-sees"  # tiny-llama's weights, a manifest with "modalities": ["text", "image"]
VLM = "tiny-vlm"
MAX_IMAGE_BYTES = 16 * 1024
HI = [{"role": "user", "content": "hi"}]


def png(color=(255, 0, 0), size=(32, 32), noise: bool = False, seed: int = 0) -> bytes:
    image = Image.new("RGB", size, color)
    if noise:  # incompressible: a PNG about 3 bytes per pixel
        image = Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def checkerboard(size: int = 64, cell: int = 8) -> bytes:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    for x in range(size):
        for y in range(size):
            if (x // cell + y // cell) % 2:
                image.putpixel((x, y), (0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


RED, CHECKERS, BIG = png(), checkerboard(), png(size=(96, 96), noise=True)  # BIG: ~27 KiB


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def asking(*urls: str, text: str = "What is in the picture?") -> list[dict]:
    parts = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": parts}]


# ---- the image site ----------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes = {"/red.png": RED, "/checkers.jpg": CHECKERS, "/big.png": BIG, "/corrupt.png": b"\x89PNG\r\n\x1a\nbroken"}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/slow.png":
            self.server.release.wait(30)  # type: ignore[attr-defined]
        body = self.routes.get(self.path.replace("/slow.png", "/red.png"))
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


class Site(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # the ortserve server hangs up on a slow or too large image: expected


@pytest.fixture(scope="module")
def site():
    server = Site(("127.0.0.1", 0), Handler)
    server.seen, server.release = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def url(site, path: str) -> str:
    return f"http://127.0.0.1:{site.server_address[1]}{path}"


# ---- servers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def sighted_home(server_home, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("vision-e2e") / "home"
    shutil.copytree(server_home, home)
    source = home / "models" / CHAT_MODEL
    shutil.copytree(source, home / "models" / SIGHTED)
    manifest = json.loads((source / "manifest.json").read_text())
    (home / "models" / SIGHTED / "manifest.json").write_text(json.dumps({**manifest, "modalities": ["text", "image"]}))
    return home


@pytest.fixture(scope="module")
def open_server(sighted_home, tmp_path_factory):
    log = tmp_path_factory.mktemp("vision-logs") / "open.log"
    server = start_server(
        sighted_home,
        log,
        env={
            "ORTSERVE_IMAGE_FETCH_ALLOW": "127.0.0.1",
            "ORTSERVE_IMAGE_FETCH_TIMEOUT": "3",
            "ORTSERVE_IMAGE_MAX_BYTES": str(MAX_IMAGE_BYTES),
        },
    )
    yield server
    stop_server_cleanly(server)


@pytest.fixture(scope="module")
def guarded_server(sighted_home, tmp_path_factory):
    log = tmp_path_factory.mktemp("vision-logs") / "guarded.log"
    server = start_server(sighted_home, log)
    yield server
    stop_server_cleanly(server)


@pytest.fixture(scope="module")
def vision_server(vision_store_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("vision-e2e") / "vlm-home"
    shutil.copytree(vision_store_home, home)
    log = tmp_path_factory.mktemp("vision-logs") / "vlm.log"
    server = start_server(home, log, env={"ORTSERVE_IMAGE_FETCH_ALLOW": "127.0.0.1"})
    yield server
    stop_server_cleanly(server)


@pytest.fixture
def open_client(open_server):
    with open_server.client(max_retries=0, timeout=60) as client:
        yield client
    with open_server.client(max_retries=0, timeout=60) as client:  # after each test: still serving
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=2)
        assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.fixture
def vision_client(vision_server):
    with vision_server.client(max_retries=0, timeout=120) as client:
        yield client


def refusal(client, model: str, messages: list[dict], **fields) -> dict:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=messages, max_tokens=4, **fields)
    assert info.value.status_code == 400
    body = info.value.body
    assert body["type"] == "invalid_request_error" and body["message"], body
    return body


# ---- refusals, on any server ------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_a_text_only_model_refuses_images(open_client, site, stream):
    site.seen.clear()
    body = refusal(open_client, CHAT_MODEL, asking(url(site, "/red.png")), stream=stream)
    assert body["param"] == "messages.0.content.1" and "does not accept images" in body["message"]
    assert site.seen == []  # refused before anything was fetched


def test_a_loopback_url_is_refused_without_the_allow_list(guarded_server, site):
    site.seen.clear()
    with guarded_server.client(max_retries=0, timeout=60) as client:
        for address in (url(site, "/red.png"), "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.png"):
            body = refusal(client, SIGHTED, asking(address))
            assert (body["param"], body["code"]) == ("messages.0.content.1.image_url", "image_url_refused")
            assert "image_fetch_allow" in body["message"]
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=2)
        assert reply.choices[0].finish_reason in ("stop", "length")
    assert site.seen == []


def test_the_metadata_address_stays_refused_when_loopback_is_allowed(open_client):
    body = refusal(open_client, SIGHTED, asking("http://169.254.169.254/latest/meta-data/iam/"))
    assert body["code"] == "image_url_refused"


@pytest.mark.parametrize("address", ["file:///etc/passwd", "ftp://127.0.0.1/red.png", "gopher://127.0.0.1:70/"])
def test_other_schemes_are_refused(open_client, address):
    body = refusal(open_client, SIGHTED, asking(address))
    assert body["code"] == "image_url_refused" and body["param"] == "messages.0.content.1.image_url"


def test_too_large_images_are_400s(open_client, site):
    assert len(BIG) > MAX_IMAGE_BYTES
    for image in (url(site, "/big.png"), data_url(BIG)):  # fetched, and inline (the body itself is allowed)
        body = refusal(open_client, SIGHTED, asking(image))
        assert body["code"] == "image_too_large" and f"{MAX_IMAGE_BYTES:,} bytes" in body["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_slow_image_times_out(open_client, site, stream):
    body = refusal(open_client, SIGHTED, asking(url(site, "/slow.png")), stream=stream)
    assert body["code"] == "image_fetch_timeout" and "3 s" in body["message"]


def test_corrupt_and_missing_images_are_400s_naming_the_part(open_client, site):
    cases = [
        (url(site, "/corrupt.png"), "invalid_image"),
        (data_url(b"GIF89a but not really"), "invalid_image"),
        ("bm90IGFuIGltYWdl", "invalid_image"),  # bare base64 of text
        ("data:text/html;base64,PGgxPmhpPC9oMT4=", "invalid_image"),
        (url(site, "/missing.png"), "image_fetch_failed"),
    ]
    for image, code in cases:
        messages = [*HI, {"role": "assistant", "content": "hello"}, *asking(data_url(RED), image)]
        body = refusal(open_client, SIGHTED, messages)
        assert (body["param"], body["code"]) == ("messages.2.content.2.image_url", code), body


def test_images_outside_user_messages_are_refused(open_client):
    messages = [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": data_url(RED)}}]}, *HI]
    assert refusal(open_client, SIGHTED, messages)["param"] == "messages.0.content.0"


# ---- images that reach the vision model ---------------------------------------------
def reply(client, messages, **fields) -> str:
    response = client.chat.completions.create(model=VLM, messages=messages, temperature=0, max_tokens=24, **fields)
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 0
    return response.choices[0].message.content or ""


def test_base64_and_url_images_give_the_same_reply(vision_client, site):
    by_url = reply(vision_client, asking(url(site, "/checkers.jpg")))
    assert by_url
    assert reply(vision_client, asking(data_url(CHECKERS, "image/jpeg"))) == by_url
    assert reply(vision_client, asking(base64.b64encode(CHECKERS).decode())) == by_url
    short_form = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in the picture?"},
                {"type": "image_url", "image_url": url(site, "/checkers.jpg")},
            ],
        }
    ]
    assert reply(vision_client, short_form) == by_url


@pytest.mark.parametrize("images", [["url"], ["base64", "url"]])
def test_fp32_replies_equal_transformers_greedy(vision_client, site, vlm_reference, images):
    """The served reply (fp32 tiny-vlm, temperature 0) is PyTorch's greedy `generate` on the same pictures."""
    pictures = {"url": (url(site, "/checkers.jpg"), CHECKERS), "base64": (data_url(RED), RED)}
    urls, raw = zip(*(pictures[kind] for kind in images), strict=True)
    served = vision_client.chat.completions.create(model=VLM, messages=asking(*urls), temperature=0, max_tokens=12)
    parts = [{"type": "text", "text": "What is in the picture?"}] + [{"type": "image"}] * len(raw)
    tokens, prompt_tokens = hf_greedy(vlm_reference, [{"role": "user", "content": parts}], list(raw), 12)
    assert served.choices[0].message.content == vlm_reference[0].decode(tokens, skip_special_tokens=True)
    assert served.usage.prompt_tokens == prompt_tokens  # the image tokens included, as transformers expands them


def test_different_images_give_different_replies(vision_client):
    red = reply(vision_client, asking(data_url(RED)))
    assert reply(vision_client, asking(data_url(RED))) == red  # greedy: the same image, the same reply
    assert reply(vision_client, asking(data_url(CHECKERS, "image/jpeg"))) != red


def test_several_images_and_streaming(vision_client, site):
    messages = asking(data_url(RED), url(site, "/checkers.jpg"), text="Compare them.")
    whole = reply(vision_client, messages)
    stream = vision_client.chat.completions.create(
        model=VLM, messages=messages, temperature=0, max_tokens=24, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole
    # every image counts, in its place
    assert reply(vision_client, asking(data_url(RED), data_url(RED), text="Compare them.")) != whole
    assert reply(vision_client, asking(url(site, "/checkers.jpg"), data_url(RED), text="Compare them.")) != whole


def test_a_photo_larger_than_the_model_keeps_is_served_at_the_models_size(vision_client):
    photo = Image.new("RGB", (2000, 1500), (40, 120, 200))  # 3 MP; tiny-vlm keeps 12,544 px
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=30)  # flat: ~20 KB, inside the test server's 64 KiB body limit
    messages = asking(data_url(out.getvalue(), "image/jpeg"))
    big = vision_client.chat.completions.create(model=VLM, messages=messages, temperature=0, max_tokens=4)
    largest = vision_client.chat.completions.create(
        model=VLM, messages=asking(data_url(png(size=(112, 112)))), temperature=0, max_tokens=4
    )
    # 112 x 112 is the processor's largest grid (16 image tokens): the photo gets at most as many
    assert big.choices[0].finish_reason in ("stop", "length")
    assert 0 < big.usage.prompt_tokens <= largest.usage.prompt_tokens


def test_a_vision_model_keeps_serving_after_bad_images(vision_client, site):
    refusal(vision_client, VLM, asking(data_url(b"broken")))
    refusal(vision_client, VLM, asking(url(site, "/missing.png")))
    assert reply(vision_client, HI)
    assert reply(vision_client, asking(data_url(RED)))
