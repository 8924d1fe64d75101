"""Safe photo decoding: every photo that enters FishEye goes through `decode_image`.

A photo is untrusted input. Decoding is bounded three ways before its cost is paid:
- only the formats FishEye documents are handed to Pillow (`ALLOWED_FORMATS`); anything
  else is refused without running another decoder;
- the header's size is checked against a pixel limit (decompression bombs);
- the memory the decode and the conversion to RGB would take is estimated from the header
  (pixels x bytes per pixel of each copy, plus the decoder's own buffers read from the
  file's structure: `decode_cost`); a photo over the budget is decoded smaller (JPEG's DCT
  scaling) and shrunk in its own pixel mode before any conversion, or refused;
- structures whose decode takes CPU time out of proportion to the pixels (a JPEG's scans,
  a PNG's chunks, a run-length BMP) are refused before they are decoded (`decode_cost`).
Photos within the budget take exactly the path training used, so predictions match.
Every decoder failure becomes an ImageDecodeError: a per-file error, never a crash.
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fisheye.data.decode_cost import StructureError, file_buffer_bytes, image_buffer_bytes
from fisheye.data.storage import is_url, read_url

MB = 1024 * 1024
# Photos larger than this are refused before their pixels are decoded (decompression bombs).
DEFAULT_MAX_PIXELS = 40_000_000
# Memory one decode may take (the decoded pixels plus the copies that convert them to RGB).
DEFAULT_MAX_DECODE_BYTES = 160 * MB
# Files larger than this are not read at all.
DEFAULT_MAX_FILE_BYTES = 64 * MB
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# Pillow's names of the formats FishEye reads. (The JPEG reader also opens the JPEG files
# with extra pictures that many phones and cameras write; Pillow calls those MPO.)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
FORMATS_TEXT = "JPEG, PNG, WebP, BMP or TIFF"

# We enforce our own limits before decoding; PIL's global guard would otherwise fire on a
# different threshold and with a warning rather than an error.
Image.MAX_IMAGE_PIXELS = None

# Bytes per pixel Pillow stores for a mode (everything else takes 4).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Formats whose decoder needs more than the stored pixels, per pixel (measured: libwebp
# decodes into its own RGBA buffer, which Pillow then copies; peak 15.8 bytes per pixel).
_DECODER_BYTES = {"WEBP": 16}
_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
# Modes Pillow's `reduce` averages without a full-size copy (it premultiplies alpha modes
# into a copy first, so those are shrunk by nearest neighbour instead).
_REDUCIBLE = ("L", "I", "F", "RGB", "CMYK", "YCbCr")


class ImageDecodeError(ValueError):
    """The bytes are not a photo FishEye can read (empty, truncated, not an image)."""


class UnsupportedFormatError(ImageDecodeError):
    """The file is not in one of the formats FishEye reads."""


class ImageTooLargeError(ImageDecodeError):
    """The photo has more pixels, or needs more memory, than allowed (e.g. a bomb)."""


def is_image_path(path: Path) -> bool:
    """Whether the file name has a photo suffix FishEye reads."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_photo_file(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes; devices, FIFOs, sockets, symlink loops and big files refused.

    Nothing blocks: a FIFO is refused before it is opened (and opened non-blocking, should
    one replace the file in between), and at most `max_bytes` + 1 bytes are ever read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageDecodeError("cannot read file: symbolic link loop") from exc
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError(f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise ImageTooLargeError(
                f"the file is {info.st_size / MB:.1f} MiB; the limit is {max_bytes / MB:g} MiB"
            )
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the file is over the {max_bytes / MB:g} MiB limit")
    return data


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def _conversion_bytes(img: Image.Image) -> int:
    """Bytes per pixel of the copies that turn the decoded photo into upright RGB."""
    mode = img.mode
    if mode in _HIGH_DEPTH:
        extra = 4 + 1 + 4  # 32-bit array, 8-bit greyscale, RGB
    elif mode in _WITH_ALPHA or (mode == "P" and "transparency" in img.info):
        extra = 4 + 4  # RGBA, and the RGB background it is pasted on
    elif mode == "RGB":
        extra = 0
    else:
        extra = 4  # one conversion to RGB
    return extra + 4  # an upright copy when EXIF says the photo is rotated


def _shrink(img: Image.Image, factor: int) -> Image.Image:
    """The photo `factor` times smaller on each side, in its own pixel mode."""
    if factor <= 1:
        return img
    if img.mode in _REDUCIBLE:
        return img.reduce(factor)
    size = (max(1, img.width // factor), max(1, img.height // factor))
    return img.resize(size, Image.Resampling.NEAREST)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _HIGH_DEPTH:
        if img.mode.startswith("I;16"):
            # round(x * 255 / 65535) in integers: no float copy of the photo.
            wide = np.asarray(img).astype(np.uint32)
            grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        else:
            arr = np.array(img, dtype=np.float32)
            arr *= 255.0 / (65535.0 if arr.max(initial=0) > 255 else 255.0)
            arr += 0.5
            grey = np.clip(arr, 0, 255, out=arr).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode in _WITH_ALPHA or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _open(data: bytes, max_pixels: int, max_decode_bytes: int) -> tuple[Image.Image, int]:
    """Pillow's lazy image for an allowed format whose header is within the pixel limit,
    and the bytes its decoder needs beside the pixels (`decode_cost`)."""
    try:
        buffers = file_buffer_bytes(data)
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        buffers += image_buffer_bytes(img, max_decode_bytes)
    except StructureError as exc:
        raise ImageTooLargeError(f"the image is too costly to decode: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {max_pixels:,}"
        )
    return img, buffers


def _load_within(
    img: Image.Image, buffers: int, max_decode_bytes: int, convert_bytes: int
) -> Image.Image:
    """Decode the pixels, smaller if the decode plus `convert_bytes`/pixel would pass the budget.

    JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, cheaper than full size); other
    formats are decoded at full size (refused if that alone is over budget) and then shrunk
    in their own pixel mode, before any conversion is paid for. The decoder's own buffers
    (`decode_cost`) count at full size: scaling does not shrink them.
    """
    width, height = img.size

    def cost() -> tuple[int, int]:
        pixels = img.width * img.height
        stored = _STORED_BYTES.get(img.mode, 4)
        per_pixel = max(stored, _DECODER_BYTES.get(img.format, 0))
        return pixels * per_pixel + buffers, pixels * convert_bytes

    decode, convert = cost()
    room = max_decode_bytes - buffers
    if decode + convert > max_decode_bytes and img.format in ("JPEG", "MPO") and room > 0:
        ratio = math.sqrt((decode + convert - buffers) / room)
        scale = min(8, 2 ** math.ceil(math.log2(ratio)))
        img.draft(img.mode, (math.ceil(width / scale), math.ceil(height / scale)))
        decode, convert = cost()
    if decode > max_decode_bytes:
        raise ImageTooLargeError(
            f"decoding this {width}x{height} {img.format} image needs about {decode / MB:.0f} "
            f"MiB of memory; the limit is {max_decode_bytes / MB:.0f} MiB"
        )
    img.load()
    room = max_decode_bytes - decode
    if convert > room:
        img = _shrink(img, math.ceil(math.sqrt(convert / max(room, 1))))
    return img


def _decode(data: bytes, max_pixels: int, max_decode_bytes: int) -> Image.Image:
    img, buffers = _open(data, max_pixels, max_decode_bytes)
    img = _load_within(img, buffers, max_decode_bytes, _conversion_bytes(img))
    return _to_rgb(ImageOps.exif_transpose(img))


def _thumbnail(data: bytes, size: int, max_pixels: int, max_decode_bytes: int) -> Image.Image:
    img, buffers = _open(data, max_pixels, max_decode_bytes)
    img.draft("RGB", (size, size))
    img = _load_within(img, buffers, max_decode_bytes, 4)
    return img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def _guarded(decode, *args) -> Image.Image:
    """Run a decode; every way Pillow can fail becomes an ImageDecodeError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return decode(*args)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(
            f"not a recognised image format (FishEye reads {FORMATS_TEXT})"
        ) from exc
    except (Image.DecompressionBombError, MemoryError) as exc:
        raise ImageTooLargeError(f"image is too large to decode: {exc}") from exc
    except Exception as exc:  # Pillow's decoders fail in many ways; each is one bad photo
        raise ImageDecodeError(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from exc


def read_photo(source: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """A photo's bytes from a local file (`read_photo_file`) or an s3:// / gs:// URL."""
    if is_url(source):
        return _read_url(source, max_bytes)
    return read_photo_file(source, max_bytes)


def _read(source: bytes | str | Path, max_file_bytes: int) -> bytes:
    data = read_photo(source, max_file_bytes) if isinstance(source, str | Path) else source
    if not data:
        raise ImageDecodeError("empty file")
    return data


def decode_image(
    source: bytes | str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Image.Image:
    """Decode a photo from bytes or a path into an upright 8-bit RGB image."""
    data = _read(source, max_file_bytes)
    return _guarded(_decode, data, max_pixels, max_decode_bytes)


def image_size(source: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from a photo's header, without decoding its pixels."""
    return _guarded(
        lambda data: _open(data, max_pixels, DEFAULT_MAX_DECODE_BYTES)[0].size, _read(source, 0)
    )


def decode_thumbnail(
    source: bytes | str | Path,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Image.Image:
    """A cheap size x size RGB thumbnail, aspect squashed (JPEG decoded at reduced scale)."""
    data = _read(source, max_file_bytes)
    return _guarded(_thumbnail, data, size, max_pixels, max_decode_bytes)


def _read_url(url: str, max_file_bytes: int) -> bytes:
    try:
        data = read_url(url, max_file_bytes)
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"no such object: {url}") from exc
    except OSError as exc:  # StorageError included: a missing driver, no access
        raise ImageDecodeError(f"cannot read {url}: {exc}") from exc
    if len(data) > max_file_bytes:
        raise ImageTooLargeError(f"the object is over the {max_file_bytes / MB:g} MiB limit")
    return data
