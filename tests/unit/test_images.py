"""decode_image: every photo format and mode FishEye meets becomes upright 8-bit RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from fisheye.data.images import ImageDecodeError, ImageTooLargeError, decode_image
from tests.helpers.photos import encode, photo, truncated_jpeg

SIZE = (40, 30)


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [("JPEG", {}), ("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})],
)
def test_formats_decode_to_rgb(fmt: str, kwargs: dict) -> None:
    img = decode_image(encode(photo(1, SIZE), fmt, **kwargs))
    assert img.mode == "RGB"
    assert img.size == SIZE


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "1", "CMYK"])
def test_modes_decode_to_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = decode_image(encode(photo(2, SIZE, mode), fmt))
    assert img.mode == "RGB"
    assert img.size == SIZE


def test_grayscale_keeps_values() -> None:
    src = Image.new("L", SIZE, 77)
    assert decode_image(encode(src, "PNG")).getpixel((3, 3)) == (77, 77, 77)


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", SIZE, (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    out = decode_image(encode(rgba, "PNG"))
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (10, 20, 30)


def test_palette_with_transparency() -> None:
    pal = Image.new("P", SIZE, 0)
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * (254 * 3))
    pal.putpixel((1, 1), 1)
    data = encode(pal, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == SIZE
    assert out.getpixel((5, 5)) == (255, 255, 255)  # transparent index -> white background
    assert out.getpixel((1, 1)) == (200, 0, 0)


@pytest.mark.parametrize(("value16", "expected8"), [(32768, 128), (65535, 255), (0, 0), (257, 1)])
def test_16bit_png_is_scaled_not_clipped(value16: int, expected8: int) -> None:
    src = Image.fromarray(np.full((SIZE[1], SIZE[0]), value16, dtype=np.uint16))
    assert src.mode == "I;16"
    out = decode_image(encode(src, "PNG"))
    assert out.mode == "RGB" and out.size == SIZE
    r, g, b = out.getpixel((4, 4))
    assert r == g == b
    assert abs(r - expected8) <= 1


def test_cmyk_jpeg_colours() -> None:
    src = Image.new("CMYK", SIZE, (0, 255, 255, 0))  # pure red in CMYK
    data = encode(src, "JPEG", quality=95)
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == SIZE
    r, g, b = out.getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied() -> None:
    src = photo(3, (60, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(src, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 60)
    assert out.mode == "RGB"


def test_decode_from_path(tmp_path) -> None:
    path = tmp_path / "fish.png"
    path.write_bytes(encode(photo(4, SIZE), "PNG"))
    assert decode_image(path).size == SIZE
    assert decode_image(str(path)).size == SIZE


def test_missing_file_is_a_decode_error(tmp_path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        decode_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some text, certainly not a photo\n", "not a recognised image"),
        (truncated_jpeg(), "truncated"),
    ],
    ids=["empty", "text", "truncated-jpeg"],
)
def test_bad_bytes_raise_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message) as info:
        decode_image(data)
    assert not isinstance(info.value, ImageTooLargeError)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims the given size; its pixel data is a few bytes only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + _chunk(b"IEND", b"")
    )


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


def test_decompression_bomb_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png_header_only(100_000, 100_000)
    assert len(data) < 200
    _forbid_decoding(monkeypatch)
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        decode_image(data)


def test_small_max_pixels_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(photo(5, SIZE), "JPEG")
    _forbid_decoding(monkeypatch)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=SIZE[0] * SIZE[1] - 1)


def test_max_pixels_boundary_is_inclusive() -> None:
    assert decode_image(encode(photo(5, SIZE), "PNG"), max_pixels=SIZE[0] * SIZE[1]).size == SIZE
