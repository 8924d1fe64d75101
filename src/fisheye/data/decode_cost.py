"""What decoding a photo costs beyond its pixels, read from the file's structure before
any pixel is decoded.

The pixel count bounds most of a decode, but not all of it. Four structures make a small
file cost far more, and each is checked here:
- a progressive (or multi-scan) JPEG: libjpeg keeps every DCT coefficient of the full-size
  image in memory (2 bytes per coefficient, at any output scale), and decodes the whole
  image once per scan: a file that repeats one scan a thousand times takes minutes.
- a compressed TIFF: libtiff decodes a whole tile or strip into a buffer of its own beside
  the photo, and a tile may be far larger than the photo itself.
- a PNG of very many chunks: Pillow reads each chunk in Python.
- a run-length BMP: Pillow decodes it in Python, pixel by pixel at worst.
`file_buffer_bytes` reads the raw bytes before Pillow opens them (Pillow itself walks a
PNG's chunks and a JPEG's segments up to the pixels in Python), `image_buffer_bytes` the
opened image's header. Both return the buffers to add to the decode's memory budget and
refuse (StructureError) the structures whose CPU time no budget covers.
"""

from __future__ import annotations

import math
import re
import struct

from PIL import Image

# Scans of a JPEG, counted in whole-image passes (a scan of one component of three counts
# its share of the blocks). libjpeg's standard progression takes about 5; encoders that
# search for the smallest progression about 7.
MAX_JPEG_SCAN_PASSES = 32
MAX_JPEG_SCANS = 256
# A PNG may have this many chunks (a JPEG this many marker segments) whatever its size;
# beyond it, they must average 1 KiB (libpng writes 8 KiB IDAT chunks; 800,000 empty PNG
# chunks took 8 s of CPU).
MIN_CHUNK_LIMIT = 4096
MIN_BYTES_PER_CHUNK = 1024
# Pillow decodes run-length BMPs in Python (up to a loop step per pixel).
MAX_RLE_BMP_PIXELS = 2_000_000
# All of a TIFF's tiles or strips, decompressed, against the memory budget: inflating is
# cheap per byte, but a tile may be far larger than the photo it holds.
TIFF_DECOMPRESSED_BUDGETS = 4
MB = 1024 * 1024


class StructureError(ValueError):
    """The file's structure makes its decode too expensive (message says why)."""


def file_buffer_bytes(data: bytes) -> int:
    """Decoder memory known from the raw bytes (StructureError if unbounded); run it
    before Pillow opens the file."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _png(data)
    elif data.startswith(b"\xff\xd8"):
        return _jpeg(data)
    return 0


def image_buffer_bytes(img: Image.Image, max_decode_bytes: int) -> int:
    """Decoder memory known from the opened image's header (StructureError if unbounded)."""
    if img.format == "TIFF":
        return _tiff(img, max_decode_bytes)
    if img.format == "BMP":
        _bmp(img)
    return 0


def _chunk_limit(data: bytes) -> int:
    return max(MIN_CHUNK_LIMIT, len(data) // MIN_BYTES_PER_CHUNK)


# -- JPEG ---------------------------------------------------------------------------------

# Start-of-frame markers (not DHT C4, JPG C8, DAC CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD9)) | {0x01}  # RSTn, SOI, TEM: no length
# The next marker after entropy-coded data: 0xFF, then neither a stuffed zero, a restart
# marker nor a fill byte (the match starts at the last 0xFF of any fill).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg(data: bytes) -> int:
    """libjpeg's coefficient buffer when it needs one; StructureError for too many scans."""
    blocks: dict[int, int] = {}  # component id -> its 8x8 blocks
    passes, scans, segments, pos, end = 0.0, 0, 0, 2, len(data)
    limit = _chunk_limit(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            break  # not a marker: let the decoder report what is wrong
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:  # EOI: the end of the first picture
            break
        segments += 1
        if segments > limit:
            raise StructureError(
                f"the JPEG has more than {limit:,} marker segments (each is read in turn)"
            )
        length = struct.unpack_from(">H", data, pos + 2)[0]
        segment = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker in _SOF and not blocks:
            blocks = _component_blocks(segment)
        elif marker == 0xDA:
            scans += 1
            if blocks:
                total = sum(blocks.values())
                ids = segment[1 : 1 + 2 * segment[0] : 2] if segment else b""
                passes += sum(blocks.get(i, 0) for i in ids) / total
            if scans > MAX_JPEG_SCANS or passes > MAX_JPEG_SCAN_PASSES:
                raise StructureError(
                    f"the JPEG has more than {MAX_JPEG_SCANS} scans or "
                    f"{MAX_JPEG_SCAN_PASSES} passes over its pixels (each is decoded in turn)"
                )
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    if scans <= 1 or not blocks:
        return 0
    return sum(blocks.values()) * 64 * 2  # 64 coefficients of 2 bytes per block


def _component_blocks(sof: bytes) -> dict[int, int]:
    """Each component's 8x8 blocks, padded to whole MCUs as libjpeg allocates them."""
    if len(sof) < 6:
        return {}
    height, width, count = struct.unpack_from(">HHB", sof, 1)
    comps = [sof[6 + 3 * i : 9 + 3 * i] for i in range(count) if 9 + 3 * i <= len(sof)]
    if not comps:
        return {}
    h_max = max(c[1] >> 4 for c in comps) or 1
    v_max = max(c[1] & 15 for c in comps) or 1
    mcus_x = math.ceil(width / (8 * h_max))
    mcus_y = math.ceil(height / (8 * v_max))
    return {c[0]: mcus_x * (c[1] >> 4) * mcus_y * (c[1] & 15) for c in comps}


# -- TIFF ---------------------------------------------------------------------------------


def _tiff(img: Image.Image, max_decode_bytes: int) -> int:
    """libtiff's tile or strip buffer; StructureError when all of them inflate too far."""
    tags = img.tag_v2  # type: ignore[attr-defined]
    if tags.get(259, 1) == 1:
        return 0  # uncompressed: Pillow reads the rows straight into the photo
    bits = tags.get(258, (1,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    samples = max(int(tags.get(277, 1)), len(bits), 1)
    planar = tags.get(284, 1) == 2
    bits_per_chunk_pixel = max(bits) if planar else max(bits) * samples
    # libtiff's RGBA interface (YCbCr, old JPEG) unpacks to 4 bytes a pixel.
    bytes_per_pixel = max(math.ceil(bits_per_chunk_pixel / 8), 4 if tags.get(262) == 6 else 1)
    if 322 in tags and 323 in tags:
        chunk_w, chunk_h = int(tags[322]), int(tags[323])
        per_plane = math.ceil(img.width / max(chunk_w, 1)) * math.ceil(img.height / max(chunk_h, 1))
    else:
        chunk_w, chunk_h = img.width, min(int(tags.get(278, img.height)), img.height)
        per_plane = math.ceil(img.height / max(chunk_h, 1))
    chunk_bytes = chunk_w * chunk_h * bytes_per_pixel
    chunks = per_plane * (samples if planar else 1)
    if chunk_bytes > max_decode_bytes or chunks * chunk_bytes > (
        TIFF_DECOMPRESSED_BUDGETS * max_decode_bytes
    ):
        raise StructureError(
            f"the TIFF is stored in {chunks:,} {'tile' if 322 in tags else 'strip'}(s) of "
            f"{chunk_w}x{chunk_h} pixels; decompressing them needs "
            f"{chunk_bytes / MB:,.0f} MiB at once and {chunks * chunk_bytes / MB:,.0f} MiB "
            f"in all, over the {max_decode_bytes / MB:.0f} MiB budget"
        )
    return chunk_bytes


def _bmp(img: Image.Image) -> None:
    """StructureError for a run-length BMP too large for Pillow's Python decoder."""
    rle = bool(img.tile) and img.tile[0][0] == "bmp_rle"
    if rle and img.width * img.height > MAX_RLE_BMP_PIXELS:
        raise StructureError(
            f"run-length compressed BMPs are read up to {MAX_RLE_BMP_PIXELS:,} pixels; "
            f"this one has {img.width * img.height:,} (save it as PNG or JPEG)"
        )


# -- PNG ----------------------------------------------------------------------------------


def _png(data: bytes) -> None:
    """StructureError when the PNG has more chunks than its size can justify."""
    limit = _chunk_limit(data)
    pos, chunks, end = 8, 0, len(data)
    unpack = struct.Struct(">I4s").unpack_from
    while pos + 8 <= end:
        length, kind = unpack(data, pos)
        pos += 12 + length
        chunks += 1
        if chunks > limit:
            raise StructureError(
                f"the PNG has more than {limit:,} chunks (each is read in turn); "
                "save it again with any image editor"
            )
        if kind == b"IEND":
            break
