"""Image bytes in, RGB PNG bytes out; and the inline forms of an image URL (data: URLs, bare base64).

Only PNG, JPEG, WebP and GIF are opened (Pillow is asked for those plugins alone); an
animated image gives its first frame, EXIF orientation is applied, transparency is
flattened onto white. The pixel count is checked from the header, before anything is
decoded, so a small file that claims a huge canvas (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from urllib.parse import unquote_to_bytes

from PIL import Image, ImageOps, UnidentifiedImageError

from ortserve.server.errors import ImageError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MAX_PIXELS = 50_000_000  # ~8,660 x 5,773; lower still when Pillow's own MAX_IMAGE_PIXELS is lower
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_WHITESPACE = re.compile(r"\s+")


def url_scheme(url: str) -> str | None:
    """The URL's scheme, lower-cased; None for bare base64 (its alphabet has no ':')."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def inline_bytes(url: str, max_bytes: int) -> bytes:
    """The bytes of a `data:` URL or of bare base64 (standard or URL-safe alphabet, padding optional)."""
    if url_scheme(url) == "data":
        header, comma, data = url[len("data:") :].partition(",")
        if not comma:
            raise ImageError("the data: URL has no ',' before its data.")
        media_type, *options = [p.strip().lower() for p in header.split(";")]
        if media_type and not media_type.startswith("image/") and media_type != "application/octet-stream":
            raise ImageError(f"the data: URL's media type '{media_type}' is not an image type.")
        if "base64" not in options:
            raw = unquote_to_bytes(data)
            _check_size(len(raw), max_bytes)
            return raw
        return _base64(data, max_bytes)
    return _base64(url, max_bytes)


def _base64(text: str, max_bytes: int) -> bytes:
    text = _WHITESPACE.sub("", text)
    if not text:
        raise ImageError("the image data is empty.")
    if not _BASE64.fullmatch(text):
        raise ImageError("the image is neither an http(s) or data: URL nor valid base64.")
    _check_size(len(text) * 3 // 4, max_bytes)  # before decoding: the decoded size, give or take 2 bytes
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("the image is neither an http(s) or data: URL nor valid base64.") from None


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageError(f"the image is larger than {max_bytes:,} bytes (image_max_bytes).", code="image_too_large")


def max_pixels() -> int:
    pillow = Image.MAX_IMAGE_PIXELS
    return min(MAX_PIXELS, pillow) if pillow else MAX_PIXELS


def to_png(data: bytes, fit_pixels: int | None = None) -> bytes:
    """The image as RGB PNG bytes (what every engine can read); ImageError if it is not an accepted image.

    `fit_pixels`: an image with more pixels is scaled down (aspect kept) to about that many: the model's
    own processor would shrink it anyway, and a 12 MP photo would cost the runner far more to send and
    to preprocess. CPU-bound for large images: call it on a worker thread."""
    limit = max_pixels()
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > limit:
                raise _TooManyPixels(width, height)
            target = _fitted(width, height, fit_pixels)
            if target is not None and image.format == "JPEG":
                image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale, never below the target
            image.load()  # the first frame of an animation
            picture: Image.Image = image
            if target is not None and picture.width * picture.height > target[0] * target[1]:
                picture = picture.resize(target, Image.Resampling.BICUBIC)  # releases the GIL while it works
            ImageOps.exif_transpose(picture, in_place=True)  # no copies: 50 MP are 150 MB each
            out = io.BytesIO()
            _flatten(picture).save(out, format="PNG", compress_level=1)  # inside: closing frees the pixels
    except ImageError:
        raise
    except _TooManyPixels as exc:
        raise ImageError(
            f"the image is {exc.width:,} x {exc.height:,} pixels, more than the {limit:,} accepted.",
            code="image_too_large",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own check in open() (images over its MAX_IMAGE_PIXELS), before ours could run
        raise ImageError(f"the image has more than the {limit:,} pixels accepted.", code="image_too_large") from None
    except UnidentifiedImageError:
        raise ImageError("the data is not a PNG, JPEG, WebP or GIF image.") from None
    except Exception as exc:  # untrusted data: any failure inside a decoder means a broken image
        raise ImageError(f"the image could not be decoded ({_reason(exc)}).") from None
    return out.getvalue()


def _fitted(width: int, height: int, fit_pixels: int | None) -> tuple[int, int] | None:
    """The size to scale (width, height) down to so that it holds about `fit_pixels`; None: keep it."""
    if not fit_pixels or width * height <= fit_pixels:
        return None
    scale = (fit_pixels / (width * height)) ** 0.5
    return max(1, round(width * scale)), max(1, round(height * scale))


class _TooManyPixels(Exception):
    def __init__(self, width: int, height: int):
        super().__init__(f"{width} x {height}")
        self.width, self.height = width, height


def _flatten(image: Image.Image) -> Image.Image:
    """RGB; an image with transparency is laid over white (a model sees no alpha)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        # paste releases the GIL; Image.alpha_composite holds it (0.7 s on 49 MP: the event loop stalled)
        white.paste(rgba, mask=rgba)
        return white
    return image if image.mode == "RGB" else image.convert("RGB")


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
