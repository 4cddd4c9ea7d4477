"""Shared by the image tests: image bytes, settings, assertions on refusals, an injected resolver,
and a real HTTP image server on 127.0.0.1 (a thread of the test process)."""

from __future__ import annotations

import base64
import io
import ssl
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from ortserve.server.errors import ImageError
from ortserve.server.images import ImageRef, load_images
from ortserve.server.settings import ServerSettings

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


def resolver_for(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


RED, BLUE = image_bytes((255, 0, 0)), image_bytes((0, 0, 255))


def gzipped(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODED = {  # path: (body, Content-Encoding)
    "/gzip": (gzipped(RED), "gzip"),
    "/gzip-bomb": (gzipped(bytes(64 << 20)), "gzip"),  # 64 MiB of zeros in ~64 KB
    "/gzip-empty": (gzipped(b"") * 150_000, "gzip"),  # 3 MB of empty gzip members
    "/brotli": (RED, "br"),
}


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
        elif url.path in ENCODED:  # sent encoded although we asked for identity
            body, encoding = ENCODED[url.path]
            self.send_response(200)
            self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass  # the client hung up: expected
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
