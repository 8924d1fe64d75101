"""Near-duplicate groups from a backbone's features (`fisheye data import --grouping embedding`)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from fisheye.data.grouping import DEFAULT_COSINE_THRESHOLD, group_by_embedding
from fisheye.data.manifest import ManifestRow
from fisheye.data.pipelines import Grouper
from fisheye.data.progress import NO_PROGRESS, Progress
from fisheye.training.features import DEFAULT_ARCH, backbone_features, imagenet_predictor


def embedding_grouper(
    distance_threshold: float = DEFAULT_COSINE_THRESHOLD,
    *,
    arch: str = DEFAULT_ARCH,
    backend: str = "onnx",
    cache_dir: Path | None = None,
) -> Grouper:
    """A grouper for `import_dataset`: clusters the backbone's ImageNet features (cosine)."""

    def group(rows: list[ManifestRow], progress: Progress = NO_PROGRESS) -> list[ManifestRow]:
        classes = sorted({r.label for r in rows})
        with tempfile.TemporaryDirectory(prefix="fisheye-embed-") as work:
            predictor = imagenet_predictor(classes, arch, backend, work_dir=Path(work))
            with progress.task("Embedding photos for grouping", len(rows)) as advance:
                feats = backbone_features(predictor, rows, cache_dir=cache_dir, on_done=advance)
        grouped = group_by_embedding(
            feats.rows, feats.features, distance_threshold=distance_threshold
        )
        by_path = {r.path: r.group for r in grouped}
        # Photos the model could not read get a group of their own.
        return [
            replace(r, group=by_path.get(r.path, f"unread-{i:05d}")) for i, r in enumerate(rows)
        ]

    return group
