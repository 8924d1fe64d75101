"""A seeded mutation fuzzer over every format FishEye reads and several it does not.

Each case mutates a small valid image (bit flips, overwritten runs, truncation, inserted
bytes, huge header fields) and decodes it. `decode_image` must return an RGB image or raise
an ImageDecodeError: any other exception is a bug (it would be a 500 in the server or a
traceback in the CLI). The run is bounded by a case count and a time budget.
"""

from __future__ import annotations

import io
import random
import time

import numpy as np
import pytest
from PIL import Image

from fisheye.data.images import ImageDecodeError, decode_image
from tests.helpers.bombs import dds_named_jpg, gif_canvas

CASES = 20_000
TIME_BUDGET_S = 20.0
SEED = 20261128


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    grey = rgb.convert("L")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    deep = Image.fromarray(rng.integers(0, 65536, (24, 32), dtype=np.uint16))
    floats = Image.fromarray(rng.random((24, 32), dtype=np.float32))
    return {
        "jpeg": _encode(rgb, "JPEG"),
        "jpeg-progressive": _encode(rgb, "JPEG", progressive=True),
        "jpeg-grey": _encode(grey, "JPEG"),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "png": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgba, "PNG"),
        "png-palette-trns": _encode(palette, "PNG", transparency=3),
        "png-16bit": _encode(deep, "PNG"),
        "png-interlaced": _encode(rgb, "PNG", interlace=1),
        "webp": _encode(rgb, "WEBP", quality=80),
        "webp-lossless-alpha": _encode(rgba, "WEBP", lossless=True),
        "bmp": _encode(rgb, "BMP"),
        "bmp-1bit": _encode(grey.convert("1"), "BMP"),
        "bmp-palette": _encode(palette, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff-deflate": _encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-jpeg": _encode(rgb, "TIFF", compression="jpeg"),
        "tiff-float": _encode(floats, "TIFF"),
        "tiff-cmyk": _encode(rgb.convert("CMYK"), "TIFF"),
        # Formats FishEye does not read: refused, whatever their bytes.
        "gif": _encode(palette, "GIF"),
        "gif-canvas": gif_canvas(300),
        "ico": _encode(rgb, "ICO"),
        "tga": _encode(rgb, "TGA"),
        "pcx": _encode(rgb, "PCX"),
        "dds": dds_named_jpg(),
    }


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # flip a few bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # overwrite a run with random bytes
        i = rng.randrange(len(out))
        run = rng.randint(1, 16)
        out[i : i + run] = bytes(rng.randrange(256) for _ in range(run))
    elif kind == 2:  # truncate
        del out[rng.randint(1, max(1, len(out) - 1)) :]
    elif kind == 3:  # insert random bytes
        i = rng.randrange(len(out))
        out[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 4:  # a huge value in the header (sizes, offsets, counts)
        i = rng.randrange(min(64, len(out)))
        out[i : i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00"])
    else:  # duplicate a slice (repeated chunks, markers)
        i = rng.randrange(len(out))
        out[i:i] = out[i : i + rng.randint(1, 256)]
    return bytes(out)


def test_mutated_images_decode_or_fail_cleanly() -> None:
    seeds = _seeds()
    names = sorted(seeds)
    rng = random.Random(SEED)
    start = time.monotonic()
    outcomes = {"decoded": 0, "refused": 0}
    for case in range(CASES):
        if time.monotonic() - start > TIME_BUDGET_S:
            break
        name = names[case % len(names)]
        data = _mutate(seeds[name], rng)
        try:
            img = decode_image(data, max_pixels=4_000_000, max_decode_bytes=16 * 1024 * 1024)
        except ImageDecodeError:
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # the bug this test exists to catch
            pytest.fail(f"case {case} ({name}): {type(exc).__name__}: {exc}")
        assert img.mode == "RGB" and img.width > 0 and img.height > 0
        outcomes["decoded"] += 1
    assert sum(outcomes.values()) >= 500, outcomes  # the budget allowed a real run
    assert outcomes["decoded"] and outcomes["refused"], outcomes
