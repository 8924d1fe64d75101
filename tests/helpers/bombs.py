"""Small files that are expensive to decode: the worst cases FishEye must bound.

Each is a few bytes to a few MB on disk. The first kinds describe a canvas just under the
default pixel limit (40 million pixels), in the format and pixel mode that costs the most
memory to decode and convert; the others cost far more than their pixels: CPU time (a
progressive JPEG's scans, a PNG's chunks) or decoder buffers (libjpeg's coefficients,
libtiff's tiles and strips). `decode_memory` (benchmarks) and the memory tests send them.
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


# -- Files whose decode costs far more than their pixels: CPU time and decoder buffers. --


def _jpeg_scans(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A JPEG cut into (header up to the first scan, each scan with its data, the end)."""
    pos = 2
    while data[pos + 1] != 0xDA:  # walk the marker segments up to the first SOS
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    head, scans = data[:pos], []
    while data[pos : pos + 2] == b"\xff\xda":
        end = pos + 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        while True:  # the entropy-coded data ends at a marker that is not RST or stuffing
            end = data.index(b"\xff", end)
            if data[end + 1] not in (0x00, *range(0xD0, 0xD8)):
                break
            end += 2
        # Between scans a progressive JPEG may define new Huffman tables: keep them.
        while data[end + 1] not in (0xDA, 0xD9):
            end += 2 + struct.unpack(">H", data[end + 2 : end + 4])[0]
        scans.append(data[pos:end])
        pos = end
    return head, scans, data[pos:]


def jpeg_repeated_scans(
    size: tuple[int, int] = (6000, 4000), repeats: int = 1000, which: int = -1
) -> bytes:
    """A valid progressive JPEG whose scan `which` (the last by default: a refinement scan
    that libjpeg applies to every block) is sent `repeats` times: about 100 KB that libjpeg
    decodes once per scan (a CPU bomb)."""
    img = Image.new("RGB", size, (0, 90, 160))
    head, scans, tail = _jpeg_scans(_save(img, "JPEG", quality=75, progressive=True))
    scans[which:which] = [scans[which]] * (repeats - 1)
    return head + b"".join(scans) + tail


def jpeg_progressive_444_wide(size: tuple[int, int] = (65500, 610)) -> bytes:
    """A progressive 4:4:4 JPEG just under the pixel limit: libjpeg keeps every DCT
    coefficient of a progressive image (6 bytes a pixel at 4:4:4), at any output scale."""
    img = Image.new("RGB", size, (0, 90, 160))
    return _save(img, "JPEG", quality=50, progressive=True, subsampling=0)


def _tiff(
    width: int,
    height: int,
    samples: int,
    bits: int,
    photometric: int,
    chunk: tuple[int, int] | None,
    chunk_data: bytes,
    sample_format: int = 1,
    rows_per_strip: int | None = None,
) -> bytes:
    """A little-endian TIFF with one deflate chunk: a tile of `chunk` (width, height) or,
    with chunk None, one strip of `rows_per_strip` rows (all of them by default)."""
    entries: list[tuple[int, int, int, int | bytes]] = []  # tag, type, count, value
    short, long_ = 3, 4

    def add(tag: int, typ: int, values: list[int]) -> None:
        fmt = "<" + ("H" if typ == short else "I") * len(values)
        packed = struct.pack(fmt, *values)
        entries.append((tag, typ, len(values), packed))

    add(256, long_, [width])
    add(257, long_, [height])
    add(258, short, [bits] * samples)
    add(259, short, [8])  # Adobe deflate
    add(262, short, [photometric])
    add(277, short, [samples])
    add(284, short, [1])  # chunky
    add(339, short, [sample_format] * samples)
    if chunk is None:
        add(278, long_, [rows_per_strip or height])
        offsets_tag, counts_tag = 273, 279
    else:
        add(322, long_, [chunk[0]])
        add(323, long_, [chunk[1]])
        offsets_tag, counts_tag = 324, 325
    n = len(entries) + 2
    ifd_size = 2 + 12 * n + 4
    data_at = 8 + ifd_size + 512  # room for the out-of-line values
    add(offsets_tag, long_, [data_at])
    add(counts_tag, long_, [len(chunk_data)])
    entries.sort()
    ifd, extra = [struct.pack("<H", n)], b""
    for tag, typ, count, packed in entries:
        if len(packed) <= 4:
            value = packed.ljust(4, b"\0")
        else:
            value = struct.pack("<I", 8 + ifd_size + len(extra))
            extra += packed
        ifd.append(struct.pack("<HHI", tag, typ, count) + value)
    ifd.append(b"\0\0\0\0")
    out = b"II*\0" + struct.pack("<I", 8) + b"".join(ifd) + extra
    return out.ljust(data_at, b"\0") + chunk_data


def _deflate_zeros(n: int) -> bytes:
    """n zero bytes, deflated (about 1 KB per MB)."""
    import zlib

    packer = zlib.compressobj(9)
    block = bytes(16 * 1024 * 1024)
    parts = []
    while n > 0:
        parts.append(packer.compress(block[: min(n, len(block))]))
        n -= len(block)
    return b"".join(parts) + packer.flush()


def tiff_huge_tile(tile: int = 32768, side: int = 16, samples: int = 1) -> bytes:
    """A side x side TIFF stored as one tile x tile deflate tile (about 1 MB at 32768)."""
    data = _deflate_zeros(tile * tile * samples)
    return _tiff(side, side, samples, 8, 1 if samples == 1 else 2, (tile, tile), data)


def tiff_single_strip(side: int = SIDE, kind: str = "cmyk") -> bytes:
    """A CMYK (or 32-bit float) TIFF stored as one deflate strip: libtiff's strip buffer
    holds the whole photo beside Pillow's copy."""
    if kind == "cmyk":
        return _tiff(side, side, 4, 8, 5, None, _deflate_zeros(side * side * 4))
    return _tiff(side, side, 1, 32, 1, None, _deflate_zeros(side * side * 4), sample_format=3)


def png_many_chunks(chunks: int = 800_000, where: str = "before") -> bytes:
    """A 1x1 PNG with `chunks` empty chunks: private ancillary ones before the pixels
    ("before"), empty IDAT chunks among them ("idat") or ancillary ones after ("after")."""
    import zlib

    def chunk(kind: bytes, body: bytes = b"") -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    pixels = zlib.compress(b"\0\0")
    filler = chunk(b"IDAT" if where == "idat" else b"prVt") * chunks
    if where == "before":
        body = filler + chunk(b"IDAT", pixels)
    elif where == "idat":
        body = chunk(b"IDAT", pixels[:2]) + filler + chunk(b"IDAT", pixels[2:])
    else:
        body = chunk(b"IDAT", pixels) + filler
    return b"\x89PNG\r\n\x1a\n" + header + body + chunk(b"IEND")


def bmp_rle_rows(side: int = SIDE) -> bytes:
    """An 8-bit run-length BMP of one pixel and an end-of-line per row (4 bytes a row):
    Pillow's Python decoder pads each row one pixel at a time."""
    rows = (b"\x01\x00" + b"\x00\x00") * side + b"\x00\x01"
    palette = b"\0\0\0\0\xff\xff\xff\0"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(rows), 2835, 2835, 2, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


# name -> (maker, file suffix, whether FishEye reads the format at all); each maker takes
# the canvas's side (default SIDE).
CANVAS_CASES = {
    "gif-canvas": (gif_canvas, ".gif", False),
    "png-16bit": (png_16bit, ".png", True),
    "png-palette-transparent": (png_palette_transparent, ".png", True),
    "png-rgba": (png_rgba, ".png", True),
    "tiff-float": (tiff_float, ".tif", True),
    "webp-lossless": (webp_lossless, ".webp", True),
    "jpeg-flat": (jpeg_flat, ".jpg", True),
    "bmp-bilevel": (bmp_bilevel, ".bmp", True),
}
# Files that cost CPU time or decoder buffers far beyond their pixels (makers: no argument).
COSTLY_CASES = {
    "jpeg-repeated-scans": (jpeg_repeated_scans, ".jpg", True),
    "jpeg-progressive-444-wide": (jpeg_progressive_444_wide, ".jpg", True),
    "tiff-huge-tile": (tiff_huge_tile, ".tif", True),
    "tiff-cmyk-strip": (tiff_single_strip, ".tif", True),
    "tiff-float-strip": (lambda: tiff_single_strip(kind="float"), ".tif", True),
    "png-many-chunks": (png_many_chunks, ".png", True),
    "png-many-idat-chunks": (lambda: png_many_chunks(where="idat"), ".png", True),
    "bmp-rle-rows": (bmp_rle_rows, ".bmp", True),
}
WORST_CASES = {**CANVAS_CASES, **COSTLY_CASES}
# Within every structural limit (31 of 32 scan passes) yet seconds of CPU per decode: what
# only the CPU-time limit and fair slots bound (16 at once may outlast a request timeout).
SLOW_CASES = {"jpeg-scans-at-limit": (lambda: jpeg_repeated_scans(repeats=40), ".jpg", True)}
ALL_CASES = {**WORST_CASES, **SLOW_CASES}
