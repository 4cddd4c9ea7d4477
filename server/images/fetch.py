"""Fetching an image URL: http(s) only, every hop checked by the SSRF guard, size and time capped.

Redirects are followed here, one hop at a time, so that each new host is checked
before it is reached. A hop connects to the addresses the guard checked (the URL's
host is replaced by the address; `Host` and, for https, the TLS server name and
certificate check keep the real host name), never to a second DNS answer.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass

import httpx

from ortserve.server import __version__
from ortserve.server.errors import ImageError
from ortserve.server.images.guard import AddressPolicy, Resolver

REDIRECTS = (301, 302, 303, 307, 308)
DEFAULT_PORTS = {"http": 80, "https": 443}
# Content-Encodings decoded here, capped (httpx would inflate a whole 64 KiB chunk at once: ~66 MB of zeros)
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout: float  # seconds for one URL, redirects included
    max_redirects: int


class ImageFetcher:
    """Fetches image URLs for one request; use as an async context manager (it owns one HTTP client)."""

    def __init__(
        self,
        policy: AddressPolicy,
        limits: FetchLimits,
        *,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ):
        self.policy = policy
        self.limits = limits
        self.resolver = resolver
        self.verify = verify  # tests pass a context that trusts their own certificate authority
        self._client: httpx.AsyncClient | None = None
        self._client_lock = asyncio.Lock()

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _http(self) -> httpx.AsyncClient:
        """The client, made on first use on a worker thread (loading the CA certificates takes ~35 ms)."""
        async with self._client_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._new_client)
        return self._client

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=self.verify,
            trust_env=False,  # no proxy from the environment: the connection goes where the guard checked
            follow_redirects=False,
            timeout=self.limits.timeout,
            # the pool is keyed by the pinned address: a kept connection would carry another host name's
            # requests over TLS made (and checked) for the first one; so every request connects afresh
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": f"ortserve/{__version__}", "Accept": "image/*", "Accept-Encoding": "identity"},
        )

    async def fetch(self, url: str) -> bytes:
        """The body of an image URL, after at most `max_redirects` redirects; ImageError otherwise."""
        try:
            async with asyncio.timeout(self.limits.timeout):
                for _ in range(self.limits.max_redirects + 1):
                    body, location = await self._get(url)
                    if location is None:
                        return body
                    url = location
        except (TimeoutError, httpx.TimeoutException):
            raise self._timeout() from None
        raise ImageError(
            f"the URL redirects more than {self.limits.max_redirects} times (image_max_redirects).",
            code="image_fetch_failed",
        )

    def _timeout(self) -> ImageError:
        return ImageError(
            f"fetching the image took longer than {self.limits.timeout:g} s (image_fetch_timeout).",
            code="image_fetch_timeout",
        )

    async def _get(self, url: str) -> tuple[bytes, str | None]:
        """One hop: (body, None), or (b"", the absolute URL it redirects to)."""
        target = _http_url(url)
        host = target.raw_host.decode("ascii")
        addresses = await self.policy.addresses(host, target.port or DEFAULT_PORTS[target.scheme], self.resolver)
        headers = {"Host": target.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        failure: httpx.TransportError | None = None
        client = await self._http()
        for address in addresses:
            pinned = target.copy_with(host=address, fragment=None)
            try:
                async with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                    if response.status_code in REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise ImageError(
                                f"the server answered HTTP {response.status_code} without a Location.",
                                code="image_fetch_failed",
                            )
                        return b"", _redirect_target(target, location)
                    if response.status_code != 200:
                        raise ImageError(
                            f"the server answered HTTP {response.status_code} {response.reason_phrase}.",
                            code="image_fetch_failed",
                        )
                    return await self._read(response), None
            except httpx.ConnectError as exc:  # this address does not answer: try the host's next one
                failure = exc
            except httpx.TimeoutException:
                raise
            except httpx.HTTPError as exc:
                raise ImageError(f"fetching the image failed ({_reason(exc)}).", code="image_fetch_failed") from None
        raise ImageError(f"could not connect to '{host}' ({_reason(failure)}).", code="image_fetch_failed")

    async def _read(self, response: httpx.Response) -> bytes:
        limit = self.limits.max_bytes
        declared = response.headers.get("content-length", "")
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity", *_WBITS):
            raise ImageError(
                f"the server sent the image with Content-Encoding '{encoding}', which is not accepted.",
                code="image_fetch_failed",
            )
        inflate = zlib.decompressobj(_WBITS[encoding]) if encoding in _WBITS else None
        if inflate is None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks, size, received = [], 0, 0
        async for raw in response.aiter_raw():  # the bytes as sent: decoded below, never more than the cap
            received += len(raw)
            if received > 2 * limit:  # compressed data that decodes to little (empty gzip members) ends too
                raise _too_large(limit)
            try:
                chunk = raw if inflate is None else inflate.decompress(raw, limit + 1 - size)
            except zlib.error as exc:
                message = f"the server's {encoding} data is corrupt ({exc})."
                raise ImageError(message, code="image_fetch_failed") from None
            size += len(chunk)
            if size > limit:  # while streaming: a body without a Content-Length (or a lying one) stops here
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)


def _http_url(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ImageError("the image URL is not a valid URL.", code="image_url_refused") from None
    if target.scheme not in DEFAULT_PORTS:
        raise ImageError(
            f"the URL scheme '{target.scheme}' is not accepted: use an http(s) URL, a data: URL or base64.",
            code="image_url_refused",
        )
    if not target.raw_host:
        raise ImageError("the image URL has no host.", code="image_url_refused")
    return target


def _redirect_target(target: httpx.URL, location: str) -> str:
    try:
        return str(target.join(location))
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ImageError("the server redirects to an invalid URL.", code="image_fetch_failed") from None


def _too_large(limit: int) -> ImageError:
    return ImageError(f"the image is larger than {limit:,} bytes (image_max_bytes).", code="image_too_large")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no address"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
