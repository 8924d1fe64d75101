"""Shared measuring helpers for export and bench: labelled photo sets, accuracy, latency."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from fisheye.data.images import ImageDecodeError, decode_image
from fisheye.data.transforms import Preprocessing, normalize, resize_image, to_uint8_tensor
from fisheye.inference.backends import Backend

log = logging.getLogger(__name__)
T = TypeVar("T")
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "fish-256"
DEFAULT_VAL = SHARED_DATA / "val"
DEFAULT_TRAIN = SHARED_DATA / "train"


def spread(items: Sequence[T], limit: int | None) -> list[T]:
    """At most `limit` items, evenly spaced over the sequence (so every class is represented)."""
    items = list(items)
    if limit is None or limit >= len(items):
        return items
    if limit <= 0:
        return []
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def load_uint8(paths: Sequence[Path], spec: Preprocessing) -> tuple[list[torch.Tensor], list[int]]:
    """Decode and resize photos to uint8 CHW tensors; also the indices of readable ones."""
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            images.append(to_uint8_tensor(resize_image(decode_image(path), spec)))
            kept.append(i)
        except ImageDecodeError as exc:
            log.warning("skipping unreadable photo %s: %s", path, exc)
    return images, kept


@dataclass
class LabelledSet:
    """Resized uint8 photos with class indices, ready to normalise in batches."""

    images: list[torch.Tensor]
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, spec: Preprocessing, batch_size: int = 32):
        """Normalised float batches with their label arrays, in order."""
        for i in range(0, len(self.images), batch_size):
            batch = normalize(torch.stack(self.images[i : i + batch_size]), spec)
            yield batch, self.labels[i : i + batch_size]


def load_labelled_set(
    data: Path,
    classes: Sequence[str],
    spec: Preprocessing,
    *,
    limit: int | None = None,
    split: str = "val",
) -> LabelledSet:
    """Labelled photos from a class-per-folder tree or manifest (evenly spread subset if limit)."""
    from fisheye.evaluate import check_classes, load_eval_data

    loaded = load_eval_data(Path(data), split)
    check_classes(loaded.rows, classes)
    rows = spread(sorted(loaded.rows, key=lambda r: str(r.path)), limit)
    index = {c: i for i, c in enumerate(classes)}
    images, kept = load_uint8([Path(r.path) for r in rows], spec)
    labels = np.array([index[rows[i].label] for i in kept], dtype=np.int64)
    return LabelledSet(images, labels, str(Path(data)))


def accuracy(run: Backend | Callable, data: LabelledSet, spec: Preprocessing, batch_size=32):
    """Top-1 accuracy (0..1) of a backend (or a batch -> probabilities callable) on a set."""
    if not len(data):
        return None
    fn = run.run if hasattr(run, "run") else run
    correct = 0
    for batch, labels in data.batches(spec, batch_size):
        out = fn(batch)
        probs = out.probabilities if hasattr(out, "probabilities") else np.asarray(out)
        correct += int((probs.argmax(axis=1) == labels).sum())
    return correct / len(data)


def median_ms(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 10) -> float:
    """Median wall time of `fn()` in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def example_batch(data: LabelledSet | None, spec: Preprocessing, n: int) -> torch.Tensor:
    """n preprocessed inputs: real photos from `data` (cycled) when given, else seeded noise."""
    if data is not None and len(data):
        imgs = [data.images[i % len(data)] for i in range(n)]
        return normalize(torch.stack(imgs), spec)
    gen = torch.Generator().manual_seed(0)
    size = spec.input_size
    return normalize(torch.randint(0, 256, (n, 3, size, size), generator=gen), spec)
