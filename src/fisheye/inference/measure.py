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

from fisheye.bundle import Bundle
from fisheye.data.labelled import check_classes, load_labelled
from fisheye.data.preprocess import normalize
from fisheye.inference.backend import Backend
from fisheye.inference.predictor import Predictor

log = logging.getLogger(__name__)
T = TypeVar("T")
# The workspace's real photos, beside the repository: defaults for export and bench.
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


@dataclass
class LabelledSet:
    """Labelled photo files with their class indices."""

    paths: list[Path]
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.paths)


def load_labelled_set(
    data: Path,
    classes: Sequence[str],
    *,
    limit: int | None = None,
    split: str = "val",
) -> LabelledSet:
    """Labelled photos from a class-per-folder tree or manifest (evenly spread subset if limit)."""
    loaded = load_labelled(Path(data), split)
    check_classes(loaded.rows, classes)
    rows = spread(sorted(loaded.rows, key=lambda r: str(r.path)), limit)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r.label] for r in rows], dtype=np.int64)
    return LabelledSet([Path(r.path) for r in rows], labels, str(Path(data)))


def backend_accuracy(
    bundle: Bundle, backend: Backend, data: LabelledSet, batch_size: int = 32
) -> float | None:
    """Top-1 accuracy (0..1) of a backend on the readable photos of a set (None if none)."""
    predictor = Predictor(bundle, backend=backend)
    label_of = dict(zip(data.paths, data.labels, strict=True))
    correct = total = 0
    for out in predictor.run_files(data.paths, batch_size=batch_size):
        if out.probabilities is None:
            log.warning("skipping unreadable photo %s: %s", out.path, out.error)
            continue
        total += 1
        correct += int(out.probabilities.argmax() == label_of[out.path])
    return correct / total if total else None


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


def preprocessed(predictor: Predictor, paths: Sequence[Path]) -> list[np.ndarray]:
    """Model inputs of the readable photos among `paths`, in order."""
    out = []
    for path, x, error in predictor.prepare_files(paths):
        if x is None:
            log.warning("skipping unreadable photo %s: %s", path, error)
        else:
            out.append(x)
    return out


def example_batch(predictor: Predictor, data: LabelledSet | None, n: int) -> np.ndarray:
    """n model inputs: real photos from `data` (cycled) when given, else seeded noise."""
    if data is not None and len(data):
        inputs = preprocessed(predictor, data.paths[:n])
        if inputs:
            return np.stack([inputs[i % len(inputs)] for i in range(n)])
    size = predictor.preprocessing.input_size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    return normalize(pixels, predictor.preprocessing)
