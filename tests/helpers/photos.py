"""Synthetic photos for the tests: random-noise images, encoded bytes, files and broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    """A random-noise photo of `size` (width, height), different for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    """Encode an image to bytes in the given format."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def write_photo(path: Path, seed: int, fmt: str = "JPEG", size: tuple[int, int] = (48, 40)) -> Path:
    """Write a random-noise photo file and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(photo(seed, size), fmt))
    return path


def truncated_jpeg(seed: int = 99, size: tuple[int, int] = (96, 96)) -> bytes:
    """The first half of a real JPEG."""
    data = encode(photo(seed, size), "JPEG", quality=95)
    return data[: len(data) // 2]


def write_bad_files(folder: Path) -> dict[str, Path]:
    """A text file named .jpg, an empty .png and a truncated JPEG in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {
        "text": folder / "notes.jpg",
        "empty": folder / "empty.png",
        "truncated": folder / "half.jpg",
    }
    bad["text"].write_text("this is not a photo\n")
    bad["empty"].write_bytes(b"")
    bad["truncated"].write_bytes(truncated_jpeg())
    return bad


def synthetic_photos(root: Path) -> list[Path]:
    """The photos of a synthetic set (`fisheye data synth`) under `root`: PNGs, then JPEGs."""
    return sorted(root.rglob("*.png")) + sorted(root.rglob("*.jpg"))


def class_folders(root: Path) -> list[str]:
    """The class names of a class-per-folder photo set, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())
