"""Shared test helpers for the inference tests: tiny bundles and synthetic photos."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fisheye.bundle import save_bundle
from fisheye.data.transforms import Preprocessing
from fisheye.models.backbones import build_model

CLASSES = ("Trout", "Sea Bass", "Hourse Mackerel")
INPUT_SIZE = 32


def make_bundle(
    out_dir: Path, classes: Sequence[str] = CLASSES, *, seed: int = 0, input_size: int = INPUT_SIZE
) -> Path:
    """Write a random-init small_cnn bundle (fast to build and run) and return its folder."""
    torch.manual_seed(seed)
    config = {"num_classes": len(classes), "input_size": input_size, "dropout": 0.0}
    model = build_model("small_cnn", **config)
    # Random BatchNorm statistics make the outputs depend on the photo, not only on the bias.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return save_bundle(
        out_dir,
        model.eval(),
        classes=list(classes),
        preprocessing=Preprocessing(input_size=input_size),
        architecture="small_cnn",
        architecture_config=config,
        name="test-bundle",
    )


def photo(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    """A random-noise photo, different for each seed."""
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


def truncated_jpeg(seed: int = 99) -> bytes:
    """The first half of a real JPEG."""
    data = encode(photo(seed, (96, 96)), "JPEG", quality=95)
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
