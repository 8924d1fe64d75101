"""decode_image: every photo format and mode FishEye meets becomes upright 8-bit RGB."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from fisheye.data.images import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedFormatError,
    decode_image,
    image_size,
    read_photo_file,
)
from tests.helpers.bombs import CANVAS_CASES, dds_named_jpg
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


# ---------------------------------------------------------------- formats FishEye does not read


@pytest.mark.parametrize("fmt", ["GIF", "ICO", "TGA", "PCX", "PPM", "IM"])
def test_formats_outside_the_allowlist_are_refused_unread(fmt: str) -> None:
    data = encode(photo(1, (16, 16)), fmt)
    with pytest.raises(UnsupportedFormatError, match="JPEG, PNG, WebP, BMP or TIFF"):
        decode_image(data)


def test_dds_named_jpg_is_a_clean_error() -> None:
    # Pillow's DDS reader raises NotImplementedError on this 384-byte file; FishEye never
    # hands it to that reader.
    data = dds_named_jpg()
    assert len(data) == 384
    with pytest.raises(UnsupportedFormatError):
        decode_image(data)


@pytest.mark.parametrize("error", [NotImplementedError, IndexError, ZeroDivisionError, KeyError])
def test_any_decoder_failure_is_a_decode_error(
    monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    from PIL import PngImagePlugin

    def broken(self, *args, **kwargs):
        raise error("the decoder broke")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    with pytest.raises(ImageDecodeError, match=error.__name__):
        decode_image(encode(photo(2, SIZE), "PNG"))


# ---------------------------------------------------------------- the memory budget


def test_photos_within_the_budget_decode_exactly_as_pillow_does() -> None:
    data = encode(photo(7, (300, 200)), "JPEG", quality=90)
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(np.asarray(decode_image(data)), expected)


def test_a_large_jpeg_is_decoded_smaller_within_the_budget() -> None:
    data = encode(Image.new("RGB", (2000, 1600), (10, 120, 200)), "JPEG")
    full = decode_image(data)
    small = decode_image(data, max_decode_bytes=4 * 1024 * 1024)
    assert full.size == (2000, 1600)
    assert small.width < 2000 and small.width * small.height * 8 <= 4 * 1024 * 1024
    assert small.mode == "RGB" and small.getpixel((5, 5)) == full.getpixel((5, 5))


def test_a_photo_over_the_budget_is_shrunk_before_conversion() -> None:
    img = Image.new("RGBA", (1200, 1000), (0, 0, 0, 0))
    out = decode_image(encode(img, "PNG"), max_decode_bytes=6 * 1024 * 1024)
    assert out.mode == "RGB" and out.width < 1200 and out.getpixel((0, 0)) == (255, 255, 255)


def test_a_photo_whose_decode_alone_is_over_the_budget_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(Image.new("RGB", (1200, 1000)), "PNG")
    _forbid_decoding(monkeypatch)
    with pytest.raises(ImageTooLargeError, match="MiB of memory"):
        decode_image(data, max_decode_bytes=1024 * 1024)


def test_16bit_conversion_rounds_every_value_like_the_float_formula() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = np.asarray(decode_image(encode(Image.fromarray(values), "PNG")))[..., 0]
    expected = np.clip(values / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(out, expected)


def test_float_tiff_decodes() -> None:
    img = Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64), "F")
    out = decode_image(encode(img, "TIFF"))
    assert out.mode == "RGB" and out.size == (64, 48)


def test_image_size_reads_the_header_only(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png_header_only(6000, 4000)
    _forbid_decoding(monkeypatch)
    assert image_size(data) == (6000, 4000)


def test_worst_case_files_decode_or_are_refused_cleanly() -> None:
    decoded = 0
    for name, (maker, _, readable) in CANVAS_CASES.items():
        data = maker(1200)  # the same shapes, small enough for a unit test
        if not readable:
            with pytest.raises(UnsupportedFormatError):
                decode_image(data)
            continue
        try:
            out = decode_image(data, max_decode_bytes=8 * 1024 * 1024)
        except ImageTooLargeError:
            continue  # WebP's decoder needs 16 bytes a pixel: 23 MB here
        assert out.mode == "RGB", name
        decoded += 1
    assert decoded >= 5


# ---------------------------------------------------------------- reading files safely


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(ImageDecodeError, match="not a regular file \\(a FIFO\\)"):
        decode_image(fifo)
    assert time.monotonic() - start < 2


def test_a_symlink_to_a_device_is_refused_unread(tmp_path: Path) -> None:
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageDecodeError, match="character device"):
        read_photo_file(link)


def test_a_symlink_loop_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    with pytest.raises(ImageDecodeError, match="symbolic link loop"):
        read_photo_file(tmp_path / "a.jpg")


def test_a_folder_named_like_a_photo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="a folder"):
        read_photo_file(tmp_path / "x.jpg")


def test_files_over_the_size_cap_are_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    with pytest.raises(ImageTooLargeError, match="limit"):
        read_photo_file(big, max_bytes=1024)
    assert read_photo_file(big, max_bytes=2048) == b"\xff" * 2048
