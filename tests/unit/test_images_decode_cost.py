"""Photos that cost more than their pixels: refused or counted before they are decoded.

Variants of the worst cases in tests/helpers/bombs.py, small enough for a unit test: a
progressive JPEG with one scan repeated (the last, or the first AC scan), a progressive
4:4:4 JPEG whose coefficients pass the budget, TIFFs with a tile far larger than the photo
or a single strip, PNGs and JPEGs of very many chunks or segments, a run-length BMP.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import pytest
from PIL import Image

from fisheye.data.decode_cost import (
    MAX_JPEG_SCAN_PASSES,
    MAX_RLE_BMP_PIXELS,
    MIN_CHUNK_LIMIT,
    file_buffer_bytes,
)
from fisheye.data.images import ImageTooLargeError, decode_image
from tests.helpers.bombs import (
    _deflate_zeros,
    _tiff,
    bmp_rle_rows,
    jpeg_progressive_444_wide,
    jpeg_repeated_scans,
    png_many_chunks,
    tiff_huge_tile,
    tiff_single_strip,
)
from tests.helpers.photos import encode, photo

MB = 1024 * 1024


@pytest.mark.parametrize("which", [-1, 4, 1])
def test_a_progressive_jpeg_with_a_repeated_scan_is_refused_unread(which: int) -> None:
    data = jpeg_repeated_scans((640, 480), repeats=200, which=which)
    with pytest.raises(ImageTooLargeError, match="scans"):
        decode_image(data)


def test_a_few_repeated_scans_within_the_limit_still_decode() -> None:
    data = jpeg_repeated_scans((320, 240), repeats=3)
    assert decode_image(data).size == (320, 240)


@pytest.mark.parametrize("subsampling", [0, 2])
def test_ordinary_progressive_and_baseline_jpegs_decode_unchanged(subsampling: int) -> None:
    img = photo(3, (30, 20)).resize((300, 200), Image.Resampling.BILINEAR)
    for progressive in (False, True):
        data = encode(img, "JPEG", quality=90, progressive=progressive, subsampling=subsampling)
        out = decode_image(data)
        with Image.open(io.BytesIO(data)) as ref:
            assert np.array_equal(np.asarray(out), np.asarray(ref.convert("RGB")))


def test_a_progressive_jpegs_coefficients_count_against_the_budget() -> None:
    # 4000x300 at 4:4:4: libjpeg holds 2 bytes per coefficient of every 8x8 block of the
    # three components (about 7 MB), at any output scale.
    progressive = jpeg_progressive_444_wide((4000, 300))
    assert file_buffer_bytes(progressive) == (4000 // 8) * math.ceil(300 / 8) * 3 * 64 * 2
    with pytest.raises(ImageTooLargeError, match="MiB of memory"):
        decode_image(progressive, max_decode_bytes=6 * MB)
    # The same photo as a baseline JPEG has no such buffer: it is decoded smaller instead.
    baseline = encode(Image.new("RGB", (4000, 300), (0, 90, 160)), "JPEG", subsampling=0)
    assert file_buffer_bytes(baseline) == 0
    assert decode_image(baseline, max_decode_bytes=6 * MB).width < 4000


@pytest.mark.parametrize(("tile", "samples"), [(4096, 1), (2048, 3)])
def test_a_tile_far_larger_than_the_tiff_is_refused_before_it_is_inflated(
    tile: int, samples: int
) -> None:
    with pytest.raises(ImageTooLargeError, match="tile"):
        decode_image(tiff_huge_tile(tile, samples=samples), max_decode_bytes=8 * MB)


def test_a_tiff_with_a_reasonable_tile_decodes() -> None:
    data = _tiff(16, 16, 1, 8, 1, (64, 64), _deflate_zeros(64 * 64))
    assert decode_image(data, max_decode_bytes=8 * MB).size == (16, 16)


@pytest.mark.parametrize("kind", ["cmyk", "float"])
def test_a_single_strip_tiff_counts_its_strip_buffer(kind: str) -> None:
    # 1000x1000 x 4 bytes: the photo (4 MB) fits a 6 MB budget, the photo + strip does not.
    with pytest.raises(ImageTooLargeError):
        decode_image(tiff_single_strip(1000, kind), max_decode_bytes=6 * MB)
    # Stored in many strips (as Pillow writes it), the same photo decodes within that budget.
    mode = "CMYK" if kind == "cmyk" else "F"
    data = encode(Image.new(mode, (1000, 1000)), "TIFF", compression="tiff_adobe_deflate")
    with Image.open(io.BytesIO(data)) as img:
        assert img.tag_v2[278] < 1000  # rows per strip
    assert decode_image(data, max_decode_bytes=6 * MB).mode == "RGB"


@pytest.mark.parametrize("where", ["before", "idat", "after"])
def test_a_png_of_very_many_chunks_is_refused_before_pillow_reads_them(where: str) -> None:
    data = png_many_chunks(50_000, where)
    with pytest.raises(ImageTooLargeError, match="chunks"):
        decode_image(data)


def test_a_png_with_a_few_thousand_chunks_decodes() -> None:
    data = png_many_chunks(MIN_CHUNK_LIMIT - 10, "idat")
    assert decode_image(data).size == (1, 1)


def test_a_jpeg_of_very_many_marker_segments_is_refused() -> None:
    data = encode(photo(4, (64, 48)), "JPEG")
    comment = b"\xff\xfe" + struct.pack(">H", 2)
    with pytest.raises(ImageTooLargeError, match="marker segments"):
        decode_image(data[:2] + comment * 50_000 + data[2:])


def test_a_large_run_length_bmp_is_refused_and_a_small_one_decodes() -> None:
    side = int(MAX_RLE_BMP_PIXELS**0.5) + 10
    with pytest.raises(ImageTooLargeError, match="run-length"):
        decode_image(bmp_rle_rows(side))
    assert decode_image(bmp_rle_rows(300)).size == (300, 300)


def test_the_scan_limit_leaves_room_for_real_progressions() -> None:
    # libjpeg's standard progression, for each subsampling, is far below the limit.
    for subsampling in (0, 1, 2):
        img = photo(5, (8, 8)).resize((64, 64), Image.Resampling.BILINEAR)
        data = encode(img, "JPEG", progressive=True, subsampling=subsampling)
        assert decode_image(data).size == (64, 64)
    assert MAX_JPEG_SCAN_PASSES >= 16
