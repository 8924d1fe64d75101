"""Small files that are expensive to decode: the worst cases FishEye must bound.

Each is a few bytes to a few MB on disk but describes a canvas just under the default
pixel limit (40 million pixels), in the format and pixel mode that costs the most memory
to decode and convert. `decode_memory` (benchmarks) and the memory tests send them.
"""

from __future__ import annotations

import io
import struct

from PIL import Image

SIDE = 6300  # 6300 x 6300 = 39.7 million pixels, under the 40 million limit


def gif_canvas(side: int = SIDE) -> bytes:
    """A 35-byte GIF: a side x side logical screen holding one 1x1 frame."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", side, side, 0x80, 0, 0)
        + b"\0\0\0\xff\xff\xff,"
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00;"
    )


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png_16bit(side: int = SIDE) -> bytes:
    """A 16-bit greyscale PNG (about 77 KB at 6300 px)."""
    return _save(Image.new("I;16", (side, side), 1000), "PNG", optimize=True)


def png_palette_transparent(side: int = SIDE) -> bytes:
    """A palette PNG with a transparent colour (converted through RGBA)."""
    img = Image.new("P", (side, side), 0)
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    return _save(img, "PNG", transparency=0, optimize=True)


def png_rgba(side: int = SIDE) -> bytes:
    """An RGBA PNG, half transparent."""
    return _save(Image.new("RGBA", (side, side), (10, 20, 30, 128)), "PNG", optimize=True)


def tiff_float(side: int = SIDE) -> bytes:
    """A 32-bit float greyscale TIFF, deflate-compressed."""
    return _save(Image.new("F", (side, side), 0.5), "TIFF", compression="tiff_adobe_deflate")


def webp_lossless(side: int = SIDE) -> bytes:
    """A lossless WebP of one colour."""
    return _save(Image.new("RGB", (side, side), (0, 90, 160)), "WEBP", lossless=True)


def jpeg_flat(side: int = SIDE) -> bytes:
    """A baseline JPEG of one colour."""
    return _save(Image.new("RGB", (side, side), (0, 90, 160)), "JPEG", quality=50)


def bmp_bilevel(side: int = SIDE) -> bytes:
    """A 1-bit BMP (about 5 MB at 6300 px, under the 10 MiB upload limit)."""
    return _save(Image.new("1", (side, side), 1), "BMP")


# name -> (maker, file suffix, whether FishEye reads the format at all)
WORST_CASES = {
    "gif-canvas": (gif_canvas, ".gif", False),
    "png-16bit": (png_16bit, ".png", True),
    "png-palette-transparent": (png_palette_transparent, ".png", True),
    "png-rgba": (png_rgba, ".png", True),
    "tiff-float": (tiff_float, ".tif", True),
    "webp-lossless": (webp_lossless, ".webp", True),
    "jpeg-flat": (jpeg_flat, ".jpg", True),
    "bmp-bilevel": (bmp_bilevel, ".bmp", True),
}


def dds_named_jpg() -> bytes:
    """A 384-byte DDS file (Pillow opens it, then fails with NotImplementedError)."""
    header = bytearray(128)
    header[0:4] = b"DDS "
    struct.pack_into("<I", header, 4, 124)  # header size
    struct.pack_into("<I", header, 8, 0x1007)  # flags: caps, height, width, pixel format
    struct.pack_into("<II", header, 12, 8, 8)  # height, width
    struct.pack_into("<I", header, 76, 32)  # pixel format size
    struct.pack_into("<I", header, 80, 0x4)  # DDPF_FOURCC
    header[84:88] = b"ATI9"  # a FourCC Pillow's DDS reader does not implement
    return bytes(header) + bytes(256)
