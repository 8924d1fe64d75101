"""Batch prediction on Ray Data: the same Predictor, spread over a local or remote Ray cluster.

The pipeline: photo paths/URLs -> decode + preprocess in parallel Ray tasks -> the model in
a pool of actors (each loads the bundle once) -> result rows streamed back to the caller,
which writes them with the same `ResultWriter` as the single-process engine. Only the
result rows (a few hundred bytes a photo) reach the driver; photos are read by the
workers, so on a multi-node cluster inputs must be URLs or paths on shared storage.
The bundle travels through Ray's object store, so workers need no copy of it.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fisheye.bundle import BundleError
from fisheye.data.images import ImageDecodeError
from fisheye.data.storage import PhotoRef
from fisheye.inference.predictor import FileResult, PhotoPreparer, Predictor
from fisheye.inference.results import result_row

log = logging.getLogger(__name__)

MAX_BLOCKS = 10_000
# Ray would fuse decoding into the model actors if both asked for the same resources; a
# different CPU share keeps decoding in its own tasks, which scale with the cluster's CPUs.
DECODE_TASK_CPUS = 1.0

PredictorLoader = Callable[[Path], Predictor]
"""Builds the Predictor from a bundle folder (picklable: it runs inside each actor)."""


class RayUnavailableError(RuntimeError):
    """Ray is not installed, the cluster cannot be reached, or the pipeline failed on it."""


def _ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayUnavailableError(
            "--engine ray needs Ray Data: pip install 'fisheye[scale]'"
        ) from exc
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` (e.g. ray://head:10001 or auto), else start a local one."""
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailableError(f"cannot connect to Ray at {address or 'local'}: {exc}") from exc


def bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    """Every file of a bundle folder by relative path (shipped to the actors)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"not a FishEye model bundle: {root} is not a folder")
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def prepare_batch(batch: dict[str, np.ndarray], preparer: PhotoPreparer) -> dict[str, np.ndarray]:
    """Decode + preprocess a batch of photos (a Ray task); unreadable ones get an error."""
    size = preparer.preprocessing.input_size
    paths = [str(p) for p in batch["path"]]
    pixels = np.zeros((len(paths), 3, size, size), np.float32)
    errors = [""] * len(paths)
    for i, path in enumerate(paths):
        try:
            pixels[i] = preparer(path)
        except ImageDecodeError as exc:
            errors[i] = str(exc) or "unreadable"
    return {"path": np.asarray(paths, dtype=object), "pixels": pixels, "error": np.asarray(errors)}


class PredictActor:
    """One model per actor: loads the bundle once, then turns prepared batches into rows."""

    def __init__(self, files: Any, load: PredictorLoader, top_k: int):
        ray = _ray()
        if isinstance(files, ray.ObjectRef):
            files = ray.get(files)
        self._dir = tempfile.TemporaryDirectory(prefix="fisheye-bundle-")
        for name, data in files.items():
            path = Path(self._dir.name, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.predictor = load(Path(self._dir.name))
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """JSON rows (`fisheye.inference.results.result_row`) for one prepared batch."""
        errors = [str(e) for e in batch["error"]]
        good = [i for i, e in enumerate(errors) if not e]
        predictions = {}
        if good:
            out = self.predictor.infer(np.ascontiguousarray(batch["pixels"][good]))
            for i, p in zip(good, self.predictor.predictions(out, self.top_k), strict=True):
                predictions[i] = p
        rows = []
        for i, path in enumerate(batch["path"]):
            result = FileResult(str(path), predictions.get(i), errors[i] or None)
            rows.append(json.dumps(result_row(result)))
        return {"row": np.asarray(rows, dtype=object)}


def ray_batches(
    files: Sequence[PhotoRef],
    *,
    bundle_dir: Path,
    load: PredictorLoader,
    preparer: PhotoPreparer,
    actors: int = 1,
    batch_size: int = 16,
    top_k: int = 5,
    actor_cpus: float = 0.5,
) -> Iterator[list[dict[str, Any]]]:
    """Result rows of the photos, batch by batch as the cluster produces them (any order).

    Call `connect` first. `actors` model replicas run at once, each reserving `actor_cpus`
    of Ray's CPUs; decoding runs in as many parallel tasks as the other CPUs allow.
    """
    ray = _ray()
    if not files:
        return
    if actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    if actor_cpus == DECODE_TASK_CPUS:
        raise ValueError(f"actor_cpus must differ from {DECODE_TASK_CPUS} (see DECODE_TASK_CPUS)")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own bar from the rows it receives
    # About one block a batch, so rows stream back while the rest is still being read.
    blocks = max(1, min(math.ceil(len(files) / batch_size), MAX_BLOCKS))
    ds = ray.data.from_items([{"path": str(f)} for f in files], override_num_blocks=blocks)
    ds = ds.map_batches(
        prepare_batch,
        fn_kwargs={"preparer": preparer},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=DECODE_TASK_CPUS,
    )
    ds = ds.map_batches(
        PredictActor,
        fn_constructor_kwargs={
            "files": ray.put(bundle_files(bundle_dir)),
            "load": load,
            "top_k": top_k,
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        batch_size=batch_size,
        batch_format="numpy",
    )
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield [json.loads(r) for r in batch["row"]]
    except ray.exceptions.RayError as exc:  # a task or actor failed, a node was lost
        raise RayUnavailableError(f"the Ray pipeline failed: {exc}") from exc
