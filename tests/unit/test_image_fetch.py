"""Images in chat, fetching URLs from a real HTTP server on 127.0.0.1 behind the SSRF guard: pinned addresses,
redirects, caps, timeouts, encodings, cancellation, IPv6 and https (SNI and certificates on the host name).
Host names that would need DNS go through an injected resolver, so nothing leaves the machine."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from ortserve.server.errors import ImageError
from ortserve.server.images import ImageRef, load_images
from tests.unit.image_site import (
    ImageHandler,
    ImageServer,
    load_one,
    opened,
    refused,
    resolver_for,
    serve,
    settings_for,
)


async def test_a_loopback_url_is_refused_before_any_connection(tmp_path, site):
    base, seen = site
    await refused(f"{base}/red.png", settings_for(tmp_path), "image_url_refused")
    await refused(f"http://localhost:{base.rsplit(':', 1)[1]}/red.png", settings_for(tmp_path), "image_url_refused")
    assert seen == []


async def test_an_allowed_url_is_fetched(tmp_path, site):
    base, seen = site
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"])
    red, blue = await load_images([ImageRef(f"{base}/red.png", "a"), ImageRef(f"{base}/blue.png#x", "b")], settings)
    assert opened(red).getpixel((0, 0)) == (255, 0, 0) and opened(blue).getpixel((0, 0)) == (0, 0, 255)
    assert sorted(path for path, _ in seen) == ["/blue.png", "/red.png"]


async def test_the_connection_goes_to_the_checked_address_with_the_real_host_name(tmp_path, site):
    base, seen = site
    port = base.rsplit(":", 1)[1]
    calls: list[str] = []
    # a name only the injected resolver knows: the fetch cannot resolve it again by itself, and a
    # second answer (DNS rebinding to 127.0.0.2, where nothing listens) would never be used
    answers = iter([["127.0.0.1"], ["127.0.0.2"], ["127.0.0.2"]])

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"])
    image = await load_one(f"http://images.example:{port}/red.png", settings, resolver=rebinding)
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert calls == ["images.example"]
    assert seen == [("/red.png", f"images.example:{port}")]


async def test_an_allowed_host_name_allows_its_addresses(tmp_path, site):
    base, seen = site
    port = base.rsplit(":", 1)[1]
    resolve = resolver_for({"cdn.internal": ["127.0.0.1"]})
    url = f"http://cdn.internal:{port}/blue.png"
    await refused(url, settings_for(tmp_path), "image_url_refused", resolver=resolve)
    image = await load_one(url, settings_for(tmp_path, image_fetch_allow=["CDN.internal"]), resolver=resolve)
    assert image.getpixel((0, 0)) == (0, 0, 255)
    assert seen == [("/blue.png", f"cdn.internal:{port}")]


async def test_redirects_are_followed_up_to_the_limit(tmp_path, site):
    base, seen = site
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"], image_max_redirects=3)
    assert (await load_one(f"{base}/hop?n=2", settings)).getpixel((0, 0)) == (255, 0, 0)  # 3 redirects
    assert [path for path, _ in seen] == ["/hop", "/hop", "/hop", "/red.png"]
    error = await refused(f"{base}/hop?n=3", settings, "image_fetch_failed")  # 4 redirects
    assert "redirects more than 3 times" in error.message
    assert len(seen) == 4 + 4


async def test_every_redirect_hop_is_checked_again(tmp_path, site):
    base, seen = site
    port = base.rsplit(":", 1)[1]
    resolve = resolver_for({"public.example": ["127.0.0.1"]})
    settings = settings_for(tmp_path, image_fetch_allow=["public.example"])  # the name, not its address
    for target in (f"{base}/red.png", f"http://localhost:{port}/red.png", "http://169.254.169.254/latest/meta-data/"):
        seen.clear()
        url = f"http://public.example:{port}/to?url={target}"
        await refused(
            url,
            settings,
            "image_url_refused",
            resolver=resolver_for({"public.example": ["127.0.0.1"], "localhost": ["127.0.0.1"]}),
        )
        assert [path for path, _ in seen] == ["/to"]  # the redirect's target was never reached
    error = await refused(
        f"http://public.example:{port}/to?url=file:///etc/passwd", settings, "image_url_refused", resolver=resolve
    )
    assert "'file'" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/",
        "javascript:alert(1)",
        "C:\\images\\a.png",
        "http:///nohost.png",
    ],
)
async def test_other_schemes_are_refused(tmp_path, url):
    await refused(url, settings_for(tmp_path), "image_url_refused")


async def test_too_large_bodies_are_refused(tmp_path, site):
    base, _ = site
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"], image_max_bytes=64 * 1024)
    started = time.monotonic()
    for path in ("/declared-big", "/endless"):
        error = await refused(f"{base}{path}", settings, "image_too_large")
        assert "65,536 bytes" in error.message
    assert time.monotonic() - started < 5


async def test_encoded_bodies_are_decoded_under_the_cap(tmp_path, site):
    base, _ = site
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"], image_max_bytes=1 << 20)
    assert (await load_one(f"{base}/gzip", settings)).getpixel((0, 0)) == (255, 0, 0)
    tracemalloc.start()
    try:
        error = await refused(f"{base}/gzip-bomb", settings, "image_too_large")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "1,048,576 bytes" in error.message
    assert peak < 16 << 20, f"{peak:,} bytes held to refuse a 1 MiB cap"  # httpx's own gzip decoding: ~66 MB
    await refused(f"{base}/gzip-empty", settings, "image_too_large")  # 3 MB of empty members: no end of input
    error = await refused(f"{base}/brotli", settings, "image_fetch_failed")
    assert "Content-Encoding 'br'" in error.message


async def test_a_slow_server_times_out(tmp_path, site):
    base, _ = site
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"], image_fetch_timeout=0.5)
    started = time.monotonic()
    error = await refused(f"{base}/slow?s=5", settings, "image_fetch_timeout")
    assert "0.5 s" in error.message
    assert time.monotonic() - started < 4  # not the 5 s the server takes


async def test_http_errors_and_bodies_that_are_not_images(tmp_path, site):
    base, _ = site
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"])
    assert "HTTP 404" in (await refused(f"{base}/missing.png", settings, "image_fetch_failed")).message
    assert "not a PNG" in (await refused(f"{base}/corrupt", settings, "invalid_image")).message
    bad_redirect = await refused(f"{base}/to?url=http://[::1", settings, "image_fetch_failed")
    assert "invalid url" in bad_redirect.message.lower()
    closed_port = base.rsplit(":", 1)[0] + ":1"
    assert "could not connect" in (await refused(f"{closed_port}/x.png", settings, "image_fetch_failed")).message


async def test_a_requests_images_are_fetched_concurrently_and_the_first_failure_wins(tmp_path, site):
    base, _ = site
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"])
    started = time.monotonic()
    pngs = await load_images([ImageRef(f"{base}/slow?s=1", str(i)) for i in range(4)], settings)
    assert len(pngs) == 4 and time.monotonic() - started < 3  # one after another: 4 s
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        await load_images([ImageRef(f"{base}/slow?s=5", "slow"), ImageRef("bm90IGFuIGltYWdl", "bad")], settings)
    assert info.value.param == "bad" and time.monotonic() - started < 4  # the slow fetch (5 s) was cancelled


async def test_a_request_that_goes_away_cancels_its_fetches_and_closes_the_client(tmp_path, site, monkeypatch):
    base, seen = site
    closed: list[object] = []
    aclose = httpx.AsyncClient.aclose

    async def recording_aclose(client):
        closed.append(client)
        await aclose(client)

    monkeypatch.setattr(httpx.AsyncClient, "aclose", recording_aclose)
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"])
    before = asyncio.all_tasks()
    load = asyncio.ensure_future(load_images([ImageRef(f"{base}/slow?s=5", str(i)) for i in range(3)], settings))
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:  # until every fetch is waiting on the server
        await asyncio.sleep(0.02)
    assert len(seen) == 3
    started = time.monotonic()
    load.cancel()  # what Quart does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await load
    assert time.monotonic() - started < 2 and len(closed) == 1  # not the 5 s the server would take
    assert asyncio.all_tasks() - before == set()  # no fetch left running


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_address_is_pinned_in_brackets(tmp_path):
    class V6Server(ImageServer):
        address_family = socket.AF_INET6

    server = V6Server(("::1", 0), ImageHandler)
    server.seen, server.release = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        settings = settings_for(tmp_path, image_fetch_allow=["::1"])
        resolve = resolver_for({"v6.example": ["::1"]})
        await refused(f"http://[::1]:{port}/red.png", settings_for(tmp_path), "image_url_refused")
        assert (await load_one(f"http://[::1]:{port}/red.png", settings)).getpixel((0, 0)) == (255, 0, 0)
        assert (await load_one(f"http://v6.example:{port}/blue.png", settings, resolver=resolve)).getpixel((0, 0)) == (
            0,
            0,
            255,
        )
        assert server.seen == [("/red.png", f"[::1]:{port}"), ("/blue.png", f"v6.example:{port}")]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---- https: the pinned address, with SNI and the certificate checked on the host name ------
def make_certificates(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for `name` it signs, with the openssl command."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ortserve test CA",
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={name}"
    )
    (folder / "ext.cnf").write_text(f"subjectAltName=DNS:{name}\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
async def test_https_keeps_sni_and_the_certificate_check_on_the_host_name(tmp_path):
    ca, cert, key = make_certificates(tmp_path, "images.example")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server, thread = serve(context)
    try:
        port = server.server_address[1]
        trust = ssl.create_default_context(cafile=str(ca))
        resolve = resolver_for({"images.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
        settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"])
        image = await load_one(f"https://images.example:{port}/red.png", settings, resolver=resolve, verify=trust)
        assert image.getpixel((0, 0)) == (255, 0, 0)
        assert names == ["images.example"] and server.seen == [("/red.png", f"images.example:{port}")]
        # the same address under a name the certificate does not hold: the check is on the name
        error = await refused(
            f"https://other.example:{port}/red.png", settings, "image_fetch_failed", resolver=resolve, verify=trust
        )
        assert "certificate" in error.message.lower()

        # nor when it comes after the first name in one request: no reuse of the connection made for that name
        async def later(host: str, port: int) -> list[str]:
            await asyncio.sleep(0.3 if host == "other.example" else 0)  # the first image is in by then
            return await resolve(host, port)

        names.clear()
        refs = [ImageRef(f"https://{host}:{port}/red.png", host) for host in ("images.example", "other.example")]
        with pytest.raises(ImageError) as info:
            await load_images(refs, settings, resolver=later, verify=trust)
        assert info.value.param == "other.example" and "certificate" in info.value.message.lower()
        assert names == ["images.example", "other.example"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---- the request: content parts, prompts, and models that take no images --------
