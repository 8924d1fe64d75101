"""Near-duplicate grouping: photos that are flips/rotations of one source photo share a group.

Descriptor: the photo is viewed as it was before being squashed to its stored size (the frame
in which it was rotated, by default the 590x445 frame of the Large Scale Fish Dataset), and
sampled on concentric rings inside that frame's inscribed disk, which a rotation about the
centre maps onto itself and where rotated copies have no black corners. For each ring and
channel (intensity and two opponent-colour channels) the magnitudes of the low angular Fourier
coefficients are kept: a rotation shifts the ring's phase and a flip conjugates it, neither
changes a magnitude. Photos are then clustered within each class (average linkage, Euclidean
distance, `distance_threshold`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from fisheye.data.images import ImageDecodeError, decode_image, decode_thumbnail
from fisheye.data.manifest import ManifestRow
from fisheye.data.progress import NO_PROGRESS, Progress

log = logging.getLogger(__name__)

# Width/height of the frame the source photos were rotated in (Large Scale Fish Dataset).
FISH_FRAME_ASPECT = 590 / 445
# Average-linkage Euclidean distance below which two clusters are one source photo. On the
# real fish-256 photos the group count is flat (421-441 groups) from 0.04 to 0.15.
DEFAULT_DISTANCE_THRESHOLD = 0.08
THUMB_SIZE = 96
N_RINGS = 20
N_ANGLES = 64
N_FREQS = 9
RING_EXTENT = 0.95
# A light blur before sampling makes rings robust to resampling noise of rotated copies.
BLUR_RADIUS = 0.0


def _sampling_grid(frame_aspect: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (ys, xs) of the ring samples in a size x size thumbnail."""
    theta = np.linspace(0.0, 2.0 * np.pi, N_ANGLES, endpoint=False)
    radii = (np.arange(N_RINGS) + 0.5) / N_RINGS * RING_EXTENT
    half = size / 2.0
    rx = half * min(1.0, 1.0 / frame_aspect)
    ry = half * min(1.0, frame_aspect)
    centre = (size - 1) / 2.0
    ys = centre + radii[:, None] * np.sin(theta)[None, :] * ry
    xs = centre + radii[:, None] * np.cos(theta)[None, :] * rx
    return ys, xs


def _bilinear(channels: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample (C, H, W) channels at float coordinates; returns (C, *ys.shape)."""
    h, w = channels.shape[1:]
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy = ys - y0
    fx = xs - x0
    top = channels[:, y0, x0] * (1 - fx) + channels[:, y0, x1] * fx
    bottom = channels[:, y1, x0] * (1 - fx) + channels[:, y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def load_thumbnail(path: Path, size: int = THUMB_SIZE) -> Image.Image:
    """A cheap size x size RGB thumbnail (JPEG draft decoding, aspect squashed)."""
    return decode_thumbnail(path, size)


def rotation_invariant_descriptor(
    image: Image.Image, frame_aspect: float | None = FISH_FRAME_ASPECT
) -> np.ndarray:
    """A flip- and rotation-invariant vector describing a photo (see module docstring)."""
    aspect = frame_aspect if frame_aspect else image.width / image.height
    thumb = image.convert("RGB")
    if thumb.size != (THUMB_SIZE, THUMB_SIZE):
        thumb = thumb.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR)
    if BLUR_RADIUS > 0:
        thumb = thumb.filter(ImageFilter.GaussianBlur(BLUR_RADIUS))
    arr = np.asarray(thumb, dtype=np.float32) / 255.0
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    channels = np.stack([(r + g + b) / 3.0, r - g, b - (r + g) / 2.0])
    ys, xs = _sampling_grid(aspect, THUMB_SIZE)
    rings = _bilinear(channels, ys, xs)  # (3, rings, angles)
    spectrum = np.abs(np.fft.rfft(rings, axis=2))[:, :, :N_FREQS] / N_ANGLES
    return spectrum.astype(np.float32).ravel()


def _descriptor_for(path: Path, frame_aspect: float | None) -> np.ndarray | None:
    try:
        if frame_aspect is None:
            image = decode_image(path)
            return rotation_invariant_descriptor(image, None)
        return rotation_invariant_descriptor(load_thumbnail(path), frame_aspect)
    except ImageDecodeError as exc:
        log.warning("cannot describe %s for grouping (%s); it gets its own group", path, exc)
        return None


def compute_descriptors(
    paths: Sequence[Path],
    frame_aspect: float | None = FISH_FRAME_ASPECT,
    on_done: Callable[[], None] | None = None,
) -> list[np.ndarray | None]:
    """Descriptors for many photos (threaded); None where a photo cannot be read."""
    workers = max(1, min(8, os.cpu_count() or 1))
    out: list[np.ndarray | None] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for desc in pool.map(lambda p: _descriptor_for(p, frame_aspect), paths):
            out.append(desc)
            if on_done is not None:
                on_done()
    return out


def cluster_descriptors(
    descriptors: np.ndarray,
    distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD,
    metric: str = "euclidean",
) -> np.ndarray:
    """Cluster labels (0..k-1, numbered by first appearance) from average-linkage clustering."""
    n = len(descriptors)
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1:
        return np.zeros(1, dtype=int)
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import pairwise_distances

    dist = pairwise_distances(descriptors.astype(np.float64), metric=metric)
    labels = (
        AgglomerativeClustering(
            n_clusters=None,
            metric="precomputed",
            linkage="average",
            distance_threshold=distance_threshold,
        )
        .fit(dist)
        .labels_
    )
    remap: dict[int, int] = {}
    return np.array([remap.setdefault(int(lab), len(remap)) for lab in labels], dtype=int)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower() or "class"


def _classes(rows: list[ManifestRow]) -> list[tuple[str, list[int]]]:
    """(unique group-name prefix, row indices) per class, classes in sorted order."""
    by_class: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_class.setdefault(row.label, []).append(i)
    used: set[str] = set()
    result = []
    for label in sorted(by_class):
        slug = _slug(label)
        while slug in used:
            slug += "_"
        used.add(slug)
        result.append((slug, by_class[label]))
    return result


def group_near_duplicates(
    rows: list[ManifestRow],
    progress: Progress = NO_PROGRESS,
    *,
    distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD,
    frame_aspect: float | None = FISH_FRAME_ASPECT,
) -> list[ManifestRow]:
    """Rows with `group` set so that copies of one source photo share it (never across classes)."""
    with progress.task("Grouping near-duplicates", len(rows)) as advance:
        descriptors = compute_descriptors([r.path for r in rows], frame_aspect, advance)
    return group_descriptors(rows, descriptors, distance_threshold=distance_threshold)


def group_descriptors(
    rows: list[ManifestRow],
    descriptors: Sequence[np.ndarray | None],
    *,
    distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD,
) -> list[ManifestRow]:
    """`group_near_duplicates` on descriptors already computed (None: unreadable, own group)."""
    groups: list[str] = [""] * len(rows)
    for slug, idx in _classes(rows):
        ok = [i for i in idx if descriptors[i] is not None]
        labels: Sequence[int] = []
        if ok:
            stacked = np.stack([descriptors[i] for i in ok])
            labels = cluster_descriptors(stacked, distance_threshold).tolist()
        n_groups = int(max(labels, default=-1)) + 1
        for i, lab in zip(ok, labels, strict=True):
            groups[i] = f"{slug}-{int(lab):04d}"
        for i in idx:
            if descriptors[i] is None:
                groups[i] = f"{slug}-{n_groups:04d}"
                n_groups += 1
    return [replace(row, group=g) for row, g in zip(rows, groups, strict=True)]


# Cosine distance on the backbone's pooled features below which photos are one group
# (average linkage, within a class). Chosen on fish-256 (docs/data.md): the group count closest
# to the ring grouping's, erring towards merging (safer for splits); rotated copies are
# only partly recognised, as ImageNet features are not rotation invariant.
DEFAULT_COSINE_THRESHOLD = 0.2


def group_by_embedding(
    rows: list[ManifestRow],
    embeddings: np.ndarray,
    *,
    distance_threshold: float = DEFAULT_COSINE_THRESHOLD,
) -> list[ManifestRow]:
    """Rows with `group` set by clustering their embeddings (cosine distance, per class).

    For collections whose photos were not rotated in the fish dataset's 590x445 frame.
    `embeddings` has one row per row of `rows`.
    """
    if len(embeddings) != len(rows):
        raise ValueError(f"{len(embeddings)} embeddings for {len(rows)} photos")
    groups = [""] * len(rows)
    for slug, idx in _classes(rows):
        labels = cluster_descriptors(embeddings[idx], distance_threshold, metric="cosine")
        for i, lab in zip(idx, labels, strict=True):
            groups[i] = f"{slug}-e{int(lab):04d}"
    return [replace(row, group=g) for row, g in zip(rows, groups, strict=True)]
