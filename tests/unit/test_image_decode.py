"""Images in chat, decoding: every accepted format to RGB PNG, the inline forms, limits; and the SSRF
address guard (which addresses are public, the allow-list, resolved names)."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import ipaddress
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from ortserve.server.errors import ImageError
from ortserve.server.images import AddressPolicy, ImageRef, is_public, load_images, to_png
from tests.unit.image_site import (
    PNG_SIGNATURE,
    b64,
    image_bytes,
    load_one,
    opened,
    refused,
    resolver_for,
    settings_for,
)


# ---- decoding ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
async def test_every_accepted_format_becomes_an_rgb_png(tmp_path, fmt):
    image = await load_one(b64(image_bytes((200, 30, 40), fmt)), settings_for(tmp_path))
    assert image.size == (8, 6)
    assert all(abs(a - b) <= 12 for a, b in zip(image.getpixel((3, 3)), (200, 30, 40), strict=True))


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


async def test_decoding_a_large_transparent_image_leaves_the_event_loop_free():
    """to_png runs on a worker thread, so none of its steps may hold the GIL for long
    (Image.alpha_composite does: 0.3-0.7 s for these 49 MP). The bound leaves room for a busy machine's
    scheduling (up to ~70 ms measured with 10 processes spinning on 2 cores)."""
    size = (7000, 7000)
    rgba = Image.radial_gradient("L").resize(size).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(size))
    out = io.BytesIO()
    rgba.save(out, format="PNG", compress_level=1)
    # the test process's own garbage collections (a large heap after a thousand tests) are not to_png's doing
    gc.collect()
    gc.disable()
    try:
        task = asyncio.ensure_future(asyncio.to_thread(to_png, out.getvalue()))
        worst = 0.0
        while not task.done():
            started = time.perf_counter()
            await asyncio.sleep(0.002)
            worst = max(worst, time.perf_counter() - started)
    finally:
        gc.enable()
    assert opened(await task).getpixel((0, 0)) == (255, 255, 255)  # alpha 0 there: white
    assert worst < 0.2, f"the event loop stalled {worst * 1000:.0f} ms"


PEAK_MEMORY = """
import resource, sys
from ortserve.server.images.decode import to_png
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
to_png(data)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * (1 if sys.platform == "darwin" else 1024))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="peak memory through the resource module (POSIX)")
def test_a_large_image_is_decoded_without_copies_of_its_pixels(tmp_path):
    """A request may carry several 50 MP images (a few hundred KB each as JPEG): one copy of their
    pixels each, not three (the EXIF turn and the RGB conversion each copied all 150 MB)."""
    path = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (10, 20, 30)).save(path, format="JPEG")
    pixels = 6000 * 4000 * 3
    run = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, str(path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 1.6 * pixels, f"peak grew {int(run.stdout):,} bytes for {pixels:,} bytes of pixels"


async def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image = await load_one(b64(image_bytes(fmt="JPEG", size=(8, 4), exif=exif)), settings_for(tmp_path))
    assert image.size == (4, 8)


def halves(fmt: str, size: tuple[int, int], **save) -> bytes:
    """Left half red, right half blue."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # JPEG: decoded at a reduced scale first (draft)
def test_large_images_are_scaled_down_to_fit_keeping_aspect_and_content(fmt):
    png = to_png(halves(fmt, (1600, 1200)), fit_pixels=30_000)
    image = opened(png)
    assert 29_000 < image.width * image.height <= 30_100 and abs(image.width / image.height - 4 / 3) < 0.02
    left, right = image.getpixel((5, image.height // 2)), image.getpixel((image.width - 5, image.height // 2))
    assert left[0] > 200 > left[2] and right[2] > 200 > right[0]
    assert opened(to_png(halves(fmt, (1600, 1200)))).size == (1600, 1200)  # no fit: kept as it is
    assert opened(to_png(halves(fmt, (100, 80)), fit_pixels=30_000)).size == (100, 80)  # small: kept


def test_a_scaled_down_photo_is_still_turned_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image = opened(to_png(halves("JPEG", (1600, 800), exif=exif), fit_pixels=20_000))
    assert image.height > image.width  # portrait once upright
    top, bottom = image.getpixel((image.width // 2, 5)), image.getpixel((image.width // 2, image.height - 5))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the red left half is on top


async def test_the_inline_forms_give_the_same_image(tmp_path):
    data = image_bytes((10, 200, 30))
    text = b64(data)
    forms = [
        f"data:image/png;base64,{text}",
        f"DATA:image/PNG;BASE64,{text}",
        f"data:;base64,{text}",
        text,
        base64.urlsafe_b64encode(data).decode().rstrip("="),
        "\n".join(text[i : i + 60] for i in range(0, len(text), 60)),  # MIME-style line breaks
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
    assert time.monotonic() - started < 5  # a bomb is refused from its header, never decoded


# ---- the address guard ---------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "100.100.100.200",
        "192.0.0.192",
        "224.0.0.1",
        "239.255.255.250",
        "0.0.0.0",
        "0.1.2.3",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%2",
        "fc00::1",
        "fd12:3456::1",
        "fd00:ec2::254",
        "ff02::1",
        "fec0::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::1",
        "2001:db8::1",
    ],
)
def test_private_and_special_addresses_are_not_public(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
    ],
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


async def test_a_public_name_resolving_to_a_private_address_is_refused():
    resolve = resolver_for(
        {
            "sneaky.example": ["10.0.0.5"],
            "mixed.example": ["93.184.216.34", "127.0.0.1"],
            "fine.example": ["93.184.216.34"],
        }
    )
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
