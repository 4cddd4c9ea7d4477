"""Images in chat requests: each image part's URL to RGB PNG bytes for the engine.

An image part's URL is a `data:` URL, bare base64, or an http(s) URL fetched by the
server (`fetch.py`, behind the SSRF guard of `guard.py`). Every image, whatever its
source, is decoded and re-encoded as PNG (`decode.py`). A request's images are loaded
concurrently; the first failure cancels the others and is a 400 naming its part.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from ortserve.server.errors import ImageError
from ortserve.server.images.decode import inline_bytes, to_png, url_scheme
from ortserve.server.images.fetch import FetchLimits, ImageFetcher
from ortserve.server.images.guard import AddressPolicy, Resolver, is_public
from ortserve.server.settings import ServerSettings

__all__ = ["ImageRef", "load_images", "is_public", "AddressPolicy", "ImageFetcher", "FetchLimits", "to_png"]


@dataclass(frozen=True)
class ImageRef:
    """One image part of a request: its URL (or base64) and where it is ("messages.0.content.1.image_url")."""

    url: str
    param: str


async def load_images(
    refs: Sequence[ImageRef],
    settings: ServerSettings,
    *,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
    fit_pixels: int | None = None,
) -> tuple[bytes, ...]:
    """Every image as PNG bytes, in order; ImageError (400, `param` = the part) for the first that fails.

    `fit_pixels`: larger images are scaled down to about that many pixels (see `to_png`)."""
    limits = FetchLimits(settings.image_max_bytes, settings.image_fetch_timeout, settings.image_max_redirects)
    policy = AddressPolicy(settings.image_fetch_allow)
    async with ImageFetcher(policy, limits, resolver=resolver, verify=verify) as fetcher:
        tasks = [asyncio.ensure_future(_load(ref, fetcher, limits.max_bytes, fit_pixels)) for ref in refs]
        try:
            return tuple(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            raise


async def _load(ref: ImageRef, fetcher: ImageFetcher, max_bytes: int, fit_pixels: int | None) -> bytes:
    try:
        if url_scheme(ref.url) in ("http", "https"):
            data = await fetcher.fetch(ref.url)
        elif url_scheme(ref.url) in (None, "data"):
            data = await asyncio.to_thread(inline_bytes, ref.url, max_bytes)  # megabytes of base64: off the loop
        else:
            raise ImageError(
                f"the URL scheme '{url_scheme(ref.url)}' is not accepted: use an http(s) URL, a data: URL or base64.",
                code="image_url_refused",
            )
        return await asyncio.to_thread(to_png, data, fit_pixels)
    except ImageError as exc:
        raise ImageError(f"Invalid image in '{ref.param}': {exc.message}", param=ref.param, code=exc.code) from None
