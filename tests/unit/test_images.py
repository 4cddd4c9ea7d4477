"""Images in chat: decoding to PNG, the inline forms, URL fetching behind the SSRF guard, and the request path.

URLs are fetched from a real HTTP server on 127.0.0.1 (a thread of this process); host
names that would need DNS go through an injected resolver, so nothing leaves the machine.
"""
from __future__ import annotations

import base64
import io
import ipaddress
import json
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from server.app import create_app
from server.engine.base import Finished, GenerationRequest, Started, TextDelta
from server.errors import ImageError, InvalidRequestError
from server.images import AddressPolicy, ImageRef, is_public, load_images
from server.protocol import ChatCompletionRequest, parse_request
from server.serving.structured import check_images_accepted
from server.settings import ModelConfig, ServerSettings
from server.store import MANIFEST, ModelEntry, ModelStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PART = "messages.0.content.1.image_url"


def image_bytes(color=(255, 0, 0), fmt="PNG", size=(8, 6), mode="RGB", **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format=fmt, **save)
    return out.getvalue()


def opened(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return image


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def settings_for(tmp_path: Path, **fields) -> ServerSettings:
    return ServerSettings(models_dir=tmp_path / "models", configs_dir=tmp_path / "configs", **fields)


async def load_one(url: str, settings: ServerSettings, **kwargs) -> Image.Image:
    (png,) = await load_images([ImageRef(url, PART)], settings, **kwargs)
    return opened(png)


async def refused(url: str, settings: ServerSettings, code: str, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        await load_images([ImageRef(url, PART)], settings, **kwargs)
    error = info.value
    assert (error.status, error.param, error.code) == (400, PART, code), error.message
    assert PART in error.message
    return error


# ---- decoding ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
async def test_every_accepted_format_becomes_an_rgb_png(tmp_path, fmt):
    image = await load_one(b64(image_bytes((200, 30, 40), fmt)), settings_for(tmp_path))
    assert image.size == (8, 6)
    assert all(abs(a - b) <= 12 for a, b in zip(image.getpixel((3, 3)), (200, 30, 40)))


async def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = await load_one(b64(out.getvalue()), settings_for(tmp_path))
    assert image.getpixel((1, 1)) == (255, 0, 0)


async def test_transparency_is_laid_over_white(tmp_path):
    clear = image_bytes((255, 0, 0, 0), mode="RGBA")
    half = image_bytes((0, 0, 0, 128), mode="RGBA")
    assert (await load_one(b64(clear), settings_for(tmp_path))).getpixel((0, 0)) == (255, 255, 255)
    assert (await load_one(b64(half), settings_for(tmp_path))).getpixel((0, 0)) == (127, 127, 127)


async def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image = await load_one(b64(image_bytes(fmt="JPEG", size=(8, 4), exif=exif)), settings_for(tmp_path))
    assert image.size == (4, 8)


async def test_the_inline_forms_give_the_same_image(tmp_path):
    data = image_bytes((10, 200, 30))
    text = b64(data)
    forms = [
        f"data:image/png;base64,{text}",
        f"DATA:image/PNG;BASE64,{text}",
        f"data:;base64,{text}",
        text,
        base64.urlsafe_b64encode(data).decode().rstrip("="),
        "\n".join(text[i:i + 60] for i in range(0, len(text), 60)),  # MIME-style line breaks
        "data:image/png," + "".join(f"%{b:02X}" for b in data),  # percent-encoded, not base64
    ]
    pngs = await load_images([ImageRef(form, f"p{i}") for i, form in enumerate(forms)], settings_for(tmp_path))
    assert len(set(pngs)) == 1
    assert opened(pngs[0]).getpixel((0, 0)) == (10, 200, 30)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds one row of data (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("data:text/plain;base64,aGVsbG8=", "invalid_image", "not an image type"),
        ("data:image/png;base64", "invalid_image", "no ','"),
        ("not base64 at all!", "invalid_image", "nor valid base64"),
        ("   ", "invalid_image", "empty"),
        (b64(b"just some bytes that are no image"), "invalid_image", "not a PNG, JPEG, WebP or GIF"),
        (b64(image_bytes(fmt="BMP")), "invalid_image", "not a PNG, JPEG, WebP or GIF"),
        (b64(image_bytes(size=(64, 64))[:60]), "invalid_image", "could not be decoded"),  # truncated
        (b64(png_header_only(8000, 8000)), "image_too_large", "pixels"),  # 64 MP: ours
        (b64(png_header_only(10000, 10000)), "image_too_large", "pixels"),  # 100 MP: Pillow's warning first
        (b64(png_header_only(20000, 20000)), "image_too_large", "pixels"),  # 400 MP: Pillow's own bomb error
        (b64(b"\0" * 3000), "image_too_large", "image_max_bytes"),
    ],
)
async def test_bad_inline_images_are_400s_naming_the_part(tmp_path, url, code, words):
    started = time.monotonic()
    error = await refused(url, settings_for(tmp_path, image_max_bytes=2048), code)
    assert words in error.message
    assert time.monotonic() - started < 2  # a bomb is refused from its header, never decoded


# ---- the address guard ---------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "169.254.1.1",
        "100.64.0.1", "100.100.100.200", "192.0.0.192", "224.0.0.1", "239.255.255.250", "0.0.0.0", "0.1.2.3",
        "255.255.255.255", "240.0.0.1", "192.0.2.1", "198.18.0.1",
        "::1", "::", "fe80::1", "fe80::1%2", "fc00::1", "fd12:3456::1", "fd00:ec2::254", "ff02::1", "fec0::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a00:1",
        "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2001:db8::1",
    ],
)
def test_private_and_special_addresses_are_not_public(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888",
                "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_internet_addresses_are_public(address):
    assert is_public(ipaddress.ip_address(address))


def test_the_allow_list_names_hosts_addresses_and_networks():
    policy = AddressPolicy(["127.0.0.1", "10.0.0.0/8", "[::1]", "Images.Internal.", " fd00::/8 "])
    allowed = ["127.0.0.1", "::ffff:127.0.0.1", "10.200.3.4", "::1", "fd00:ec2::254", "8.8.8.8"]
    denied = ["127.0.0.2", "192.168.0.1", "169.254.169.254", "fe80::1", "172.16.0.1"]
    assert all(policy.allows(ipaddress.ip_address(a)) for a in allowed)
    assert not any(policy.allows(ipaddress.ip_address(a)) for a in denied)
    assert policy.hosts == {"images.internal"}


def resolver_for(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


async def test_a_public_name_resolving_to_a_private_address_is_refused():
    resolve = resolver_for({"sneaky.example": ["10.0.0.5"], "mixed.example": ["93.184.216.34", "127.0.0.1"],
                            "fine.example": ["93.184.216.34"]})
    policy = AddressPolicy()
    for host in ("sneaky.example", "mixed.example"):
        with pytest.raises(ImageError) as info:
            await policy.addresses(host, 80, resolve)
        assert info.value.code == "image_url_refused" and "image_fetch_allow" in info.value.message
    assert await policy.addresses("fine.example", 80, resolve) == ["93.184.216.34"]
    assert await AddressPolicy(["sneaky.example"]).addresses("sneaky.example", 80, resolve) == ["10.0.0.5"]
    assert await AddressPolicy(["10.0.0.0/24"]).addresses("sneaky.example", 80, resolve) == ["10.0.0.5"]
    with pytest.raises(ImageError) as info:
        await policy.addresses("nowhere.example", 80, resolve)
    assert info.value.code == "image_fetch_failed" and "could not be resolved" in info.value.message


# ---- fetching from a real local server -----------------------------------------
RED, BLUE = image_bytes((255, 0, 0)), image_bytes((0, 0, 255))


class ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.seen.append((url.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        if url.path in ("/red.png", "/blue.png"):
            self.send_body(RED if url.path == "/red.png" else BLUE)
        elif url.path == "/slow":
            self.server.release.wait(float(query.get("s", 5)))  # type: ignore[attr-defined]
            self.send_body(RED)
        elif url.path == "/hop":  # /hop?n=2 -> /hop?n=1 -> /hop?n=0 -> red.png (relative Locations)
            n = int(query.get("n", 0))
            self.redirect(f"/hop?n={n - 1}" if n else "red.png")
        elif url.path == "/to":
            self.redirect(query["url"])
        elif url.path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)
        elif url.path == "/endless":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"%x\r\n%s\r\n" % (4096, b"\0" * 4096))
            except OSError:
                pass  # the client hung up: expected
        elif url.path == "/corrupt":
            self.send_body(b"<html>not an image</html>", "text/html")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def send_body(self, body: bytes, content_type: str = "image/png") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str | None]]
    release: threading.Event

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up mid-body (a refused size, a timeout) is what these tests do


def serve(ssl_context: ssl.SSLContext | None = None):
    server = ImageServer(("127.0.0.1", 0), ImageHandler)
    server.seen, server.release = [], threading.Event()
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


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
        await refused(url, settings, "image_url_refused", resolver=resolver_for({"public.example": ["127.0.0.1"],
                                                                                "localhost": ["127.0.0.1"]}))
        assert [path for path, _ in seen] == ["/to"]  # the redirect's target was never reached
    error = await refused(f"http://public.example:{port}/to?url=file:///etc/passwd", settings, "image_url_refused",
                          resolver=resolve)
    assert "'file'" in error.message


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/", "javascript:alert(1)",
            "C:\\images\\a.png", "http:///nohost.png"]
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


async def test_a_slow_server_times_out(tmp_path, site):
    base, _ = site
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"], image_fetch_timeout=0.5)
    started = time.monotonic()
    error = await refused(f"{base}/slow?s=5", settings, "image_fetch_timeout")
    assert "0.5 s" in error.message
    assert time.monotonic() - started < 2


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
    pngs = await load_images([ImageRef(f"{base}/slow?s=0.6", str(i)) for i in range(4)], settings)
    assert len(pngs) == 4 and time.monotonic() - started < 1.5  # one after another: 2.4 s
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        await load_images([ImageRef(f"{base}/slow?s=5", "slow"), ImageRef("bm90IGFuIGltYWdl", "bad")], settings)
    assert info.value.param == "bad" and time.monotonic() - started < 2  # the slow fetch was cancelled


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
        assert (await load_one(f"http://v6.example:{port}/blue.png", settings, resolver=resolve)).getpixel(
            (0, 0)) == (0, 0, 255)
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

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=ortserve test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", f"/CN={name}")
    (folder / "ext.cnf").write_text(f"subjectAltName=DNS:{name}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
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
        error = await refused(f"https://other.example:{port}/red.png", settings, "image_fetch_failed",
                              resolver=resolve, verify=trust)
        assert "certificate" in error.message.lower()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---- the request: content parts, prompts, and models that take no images --------
def chat(messages) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, json.dumps({"model": "m", "messages": messages}))


def test_image_parts_in_both_shapes_become_template_parts():
    request = chat([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "compare"},
            {"type": "image_url", "image_url": {"url": "https://a.example/1.png", "detail": "low"}},
            {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
        ]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "and"}, {"type": "text", "text": "this"}]},
    ])
    assert request.image_parts() == [
        ("messages.1.content.1.image_url", "https://a.example/1.png"),
        ("messages.1.content.2.image_url", "data:image/png;base64,AAAA"),
    ]
    prompt = request.to_prompt(images=(b"1", b"2"))
    assert prompt.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "compare"}, {"type": "image"}, {"type": "image"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and\nthis"},  # no image: one string, as for a text-only request
    ]
    assert prompt.images == (b"1", b"2")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages.0.content.0"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}], "messages.1.content.0"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages.0.content.0.image_url"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}],
         "messages.0.content.0.image_url"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "max"}}]}],
         "messages.0.content.0.image_url.detail"),
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "messages.0.content.0"),
    ],
)
def test_misplaced_or_malformed_image_parts_name_their_param(messages, param):
    with pytest.raises(InvalidRequestError) as info:
        chat(messages)
    assert info.value.param == param


def entry_with(manifest: dict) -> ModelEntry:
    return ModelEntry("m", ModelConfig(), Path("."), manifest)


def test_a_text_only_model_and_too_many_images_are_refused_first():
    parts = [(f"messages.0.content.{i}.image_url", "x") for i in range(3)]
    with pytest.raises(InvalidRequestError) as info:
        check_images_accepted(entry_with({"task": "chat"}), "tiny", parts, max_images=8)
    assert info.value.param == "messages.0.content.0" and "does not accept images" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        check_images_accepted(entry_with({"modalities": ["text", "image"]}), "vlm", parts, max_images=2)
    assert info.value.param == "messages.0.content.2" and "max_images" in info.value.message
    check_images_accepted(entry_with({"modalities": ["text", "image"]}), "vlm", parts, max_images=3)
    check_images_accepted(entry_with({"task": "chat"}), "tiny", [], max_images=1)


class RecordingGenerator:
    """A TextGenerator that answers "ok" and keeps each request's prompt."""

    device, guidance_error, fim_tokens, context_length = "cpu", "no grammars here", None, 4096

    def __init__(self):
        self.prompts = []

    async def generate(self, request: GenerationRequest):
        self.prompts.append(request.prompt)
        yield Started(prompt_tokens=3, max_tokens=1)
        yield TextDelta("ok", (1,))
        yield Finished("stop", 3, 1)

    async def close(self) -> None:
        pass


@pytest.fixture
async def vision_app(tmp_path, images_server):
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"], max_images=3)
    store = ModelStore(settings.models_dir, settings.configs_dir)
    for name, manifest in (("vlm", {"task": "chat", "modalities": ["text", "image"]}), ("text", {"task": "chat"})):
        (settings.models_dir / name).mkdir(parents=True)
        (settings.models_dir / name / MANIFEST).write_text(json.dumps(manifest))
        store.write_config(name, ModelConfig())
    generator = RecordingGenerator()

    async def load(entry, **options):
        return generator

    app = create_app(settings, store, loader=load)
    async with app.test_app() as test_app:
        yield test_app.test_client(), generator, f"http://127.0.0.1:{images_server.server_address[1]}"


async def test_the_request_path_hands_png_images_to_the_engine_in_order(vision_app):
    client, generator, base = vision_app
    content = [{"type": "text", "text": "which?"}, {"type": "image_url", "image_url": {"url": f"{base}/blue.png"}},
               {"type": "image_url", "image_url": f"data:image/jpeg;base64,{b64(image_bytes(fmt='JPEG'))}"}]
    response = await client.post("/v1/chat/completions",
                                 json={"model": "vlm", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, await response.get_json()
    (prompt,) = generator.prompts
    assert prompt.messages[-1]["content"] == [{"type": "text", "text": "which?"}, {"type": "image"}, {"type": "image"}]
    blue, red = (opened(png).getpixel((0, 0)) for png in prompt.images)
    assert blue == (0, 0, 255) and red[0] > 240 and max(red[1:]) < 15


async def test_image_errors_are_openai_400s_and_the_app_keeps_serving(vision_app):
    client, generator, base = vision_app

    async def post(model: str, url: str, stream: bool = False):
        content = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}]
        response = await client.post("/v1/chat/completions", json={
            "model": model, "stream": stream, "messages": [{"role": "user", "content": content}]})
        return response.status_code, await response.get_json()

    for model, url, code in [
        ("text", f"{base}/red.png", None),  # a text-only model
        ("text", "file:///etc/passwd", None),  # refused before the URL is looked at
        ("vlm", "file:///etc/passwd", "image_url_refused"),
        ("vlm", "http://169.254.169.254/latest/meta-data/", "image_url_refused"),
        ("vlm", f"{base}/missing.png", "image_fetch_failed"),
        ("vlm", b64(b"garbage"), "invalid_image"),
    ]:
        for stream in (False, True):
            status, body = await post(model, url, stream)
            assert status == 400, body
            assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"
            assert body["error"]["param"].startswith("messages.0.content.1"), body
            if model == "text":
                assert "does not accept images" in body["error"]["message"]
    assert generator.prompts == []
    status, body = await post("vlm", f"{base}/red.png")
    assert status == 200 and body["choices"][0]["message"]["content"] == "ok"
